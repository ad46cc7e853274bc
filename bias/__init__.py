"""trustedit.bias"""
