//! ringlimit load generator (being written).
