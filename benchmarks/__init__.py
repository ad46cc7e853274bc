"""trustedit.benchmarks"""
