"""evl_ecg.data"""
