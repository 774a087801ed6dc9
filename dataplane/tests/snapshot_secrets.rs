//! `/debug/snapshot` serves `serde_json` of the live [`Snapshot`], and logs
//! may print its `Debug`: neither may carry private key material (issue 9,
//! SECURITY.md). A snapshot serving a real certificate and key is checked
//! for every form the key could take: PEM, base64 and raw DER bytes.

use switchyard_dataplane::Snapshot;
use switchyard_dataplane::tls::{TlsCerts, parse_pem_pair};

#[test]
fn serialized_and_debug_snapshot_hold_no_key_material() {
    let generated = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let key_pem = generated.signing_key.serialize_pem();
    let parsed = parse_pem_pair(generated.cert.pem().as_bytes(), key_pem.as_bytes()).unwrap();
    let mut tls = TlsCerts::default();
    let index = tls.insert("shop/a-tls", &parsed);
    tls.bind("a.test", index).unwrap();
    tls.set_default(index);
    let snapshot = Snapshot { tls, ..Snapshot::default() };

    let json = serde_json::to_string_pretty(&snapshot).unwrap();
    assert!(json.contains("shop/a-tls") && json.contains("a.test"), "the served certificate is listed: {json}");
    let debug = format!("{snapshot:?}");
    assert!(debug.contains("shop/a-tls"), "{debug}");

    let key_base64: String = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = generated.signing_key.serialize_der();
    let der_as_numbers = der[der.len() - 12..].iter().map(u8::to_string).collect::<Vec<_>>();
    for (what, text) in [("JSON", &json), ("Debug", &debug)] {
        assert!(!text.contains("PRIVATE KEY") && !text.contains("-----BEGIN"), "{what} holds PEM: {text}");
        for chunk in key_base64.as_bytes().chunks(12) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            assert!(!text.contains(chunk), "{what} holds the key's base64 ({chunk}): {text}");
        }
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(!compact.contains(&der_as_numbers.join(",")), "{what} holds the key's DER bytes: {text}");
    }
}
