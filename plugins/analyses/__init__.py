"""Analyses: each package computes one analysis (compute) and draws its part of the report (report)."""
