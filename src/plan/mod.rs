//! The fallback planner: a pure function from spec and observed health to a plan (being written).
