"""Everything both directions use: data, text, backbone, training. Imports no other project package."""
