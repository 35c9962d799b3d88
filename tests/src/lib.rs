//! Cross-component test support.
