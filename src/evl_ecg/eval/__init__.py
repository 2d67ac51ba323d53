"""evl_ecg.eval"""
