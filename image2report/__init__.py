"""Report decoders (image -> report). Not built yet: see issue 5."""
