//! Placeholder: fast CPU convolutions (being written).
