//! Renderers from a plan to Kamailio `dispatcher.list` and JSON (being written).
