"""trustedit.privacy"""
