"""evl_ecg.models"""
