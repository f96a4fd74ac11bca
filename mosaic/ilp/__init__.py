"""mosaic.ilp"""
