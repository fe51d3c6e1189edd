"""sipimdn.cpim"""
