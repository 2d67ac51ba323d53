"""evl_ecg.train"""
