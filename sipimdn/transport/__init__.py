"""sipimdn.transport"""
