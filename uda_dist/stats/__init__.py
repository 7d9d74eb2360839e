"""Per-class feature statistics for SePiCo: sufficient statistics (count, sum, sum of squares) in float64,
the running module that accumulates them behind one injected reduction, and the memory bank of per-batch
class means. The math is pure (moments.py); the two modules only hold buffers."""
