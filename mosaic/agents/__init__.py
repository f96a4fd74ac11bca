"""mosaic.agents"""
