"""Segmenters: each module labels generated images with one family of segmentation models."""
