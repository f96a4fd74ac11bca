"""mosaic.workloads"""
