"""sipimdn.dialog"""
