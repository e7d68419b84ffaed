"""Generators: each module reads one family's weights and wires its layers and norm sites."""
