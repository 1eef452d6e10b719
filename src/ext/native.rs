//! Native in-process extensions, for tests and built-in demos.
