//! See the module docs inside.
