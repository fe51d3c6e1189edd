"""sipimdn.imdn"""
