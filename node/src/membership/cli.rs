//! `slicenet membership ...`: run a membership node and print what it sees.
