"""Warmup plans from recorded traffic: read Triton's trace files (``trace``),
count the requests by shape (``shapes``), make a plan file with listed
samples and recorded data (``plan``), and measure which share of the
requests a warmup covers (``coverage``). Client side only: the helper never
imports it."""
