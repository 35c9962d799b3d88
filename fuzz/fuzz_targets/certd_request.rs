//! certd's request bodies: `POST /v1/certificates` and `POST /v1/naming`, then
//! the CSR check on whatever CSR a certificate request carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_certd::api::parse_request;
use meshlite_certd::csr;
use meshlite_contract::SpiffeId;
use meshlite_contract::api::CertificateRequest;
use meshlite_contract::naming::NamingRequest;

fuzz_target!(|body: &[u8]| {
    let _ = parse_request::<NamingRequest>(body);
    if let Ok(request) = parse_request::<CertificateRequest>(body) {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/default"
            .parse()
            .expect("a valid identity");
        let _ = csr::validate(&request.csr, &id);
    }
});
