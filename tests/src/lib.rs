//! Cross-component test support.
pub mod fake_apiserver;
