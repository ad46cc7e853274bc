"""trustedit.safety"""
