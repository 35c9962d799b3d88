//! `kubectl-meshlite`, the kubectl plugin: `kubectl meshlite check`,
//! `check --proxy`, `identity POD` and `ca rotate`. It reads the user's
//! kubeconfig as kubectl does (kubectl hands its plugins the environment,
//! `KUBECONFIG` included) and talks to the API server only: a proxy's
//! certificate is read through the pod proxy subresource.

pub mod check;
pub mod kubeapi;
pub mod pem;
pub mod proxies;
pub mod report;
pub mod rotate;
