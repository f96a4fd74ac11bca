"""mosaic.envs"""
