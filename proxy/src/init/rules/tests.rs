use super::*;

fn cfg() -> RuleConfig {
    RuleConfig {
        skip_inbound_ports: vec![9000, 15020],
        skip_outbound_ports: vec![5432],
        skip_outbound_cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00::/8".parse().unwrap()],
        ..RuleConfig::default()
    }
}

#[test]
fn fresh_ipv4_rules_match_the_documented_layout() {
    let text = render(&cfg(), Family::V4, "");
    let expected = "\
*nat
:MESHLITE_INBOUND - [0:0]
:MESHLITE_OUTPUT - [0:0]
-F MESHLITE_INBOUND
-F MESHLITE_OUTPUT
-A MESHLITE_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A MESHLITE_INBOUND -p tcp -m tcp --dport 9000 -j RETURN
-A MESHLITE_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A MESHLITE_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A MESHLITE_OUTPUT -d 127.0.0.0/8 -j RETURN
-A MESHLITE_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN
-A MESHLITE_OUTPUT -d 10.96.0.0/12 -j RETURN
-A MESHLITE_OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j MESHLITE_INBOUND
-A OUTPUT -p tcp -j MESHLITE_OUTPUT
COMMIT
";
    assert_eq!(text, expected);
}

#[test]
fn ipv6_rules_use_ipv6_loopback_and_only_ipv6_cidrs() {
    let text = render(&cfg(), Family::V6, "");
    assert!(text.contains("-A MESHLITE_OUTPUT -d ::1/128 -j RETURN\n"));
    assert!(text.contains("-A MESHLITE_OUTPUT -d fd00::/8 -j RETURN\n"));
    assert!(!text.contains("10.96.0.0"));
    assert!(!text.contains("127.0.0.0"));
}

#[test]
fn jumps_already_present_are_not_added_again() {
    let saved = "*nat\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -p tcp -j MESHLITE_INBOUND\n-A OUTPUT -p tcp -j MESHLITE_OUTPUT\nCOMMIT\n";
    let text = render(&RuleConfig::default(), Family::V4, saved);
    assert!(!text.contains("-A PREROUTING"));
    assert!(!text.contains("-A OUTPUT "));
    // Our chains are still rebuilt from scratch.
    assert!(text.contains("-F MESHLITE_OUTPUT\n"));
}

#[test]
fn proxy_uid_exemption_comes_before_any_redirect() {
    let text = render(&cfg(), Family::V4, "");
    let uid = text.find("--uid-owner 2102 -j RETURN").unwrap();
    let redirect = text.find("--to-ports 15001").unwrap();
    assert!(uid < redirect);
}

#[test]
fn cidrs_parse_bare_addresses_and_refuse_nonsense() {
    assert_eq!(
        "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
        "10.1.2.3/32"
    );
    assert_eq!("fd00::/8".parse::<Cidr>().unwrap().family(), Family::V6);
    for bad in ["10.0.0.0/33", "::/129", "x", "10.0.0.0/8 -j ACCEPT", ""] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad}");
    }
}

#[test]
fn our_rules_picks_only_meshlite_lines() {
    let saved = "-A OUTPUT -j KUBE\n-A OUTPUT -p tcp -j MESHLITE_OUTPUT\n-A MESHLITE_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n";
    assert_eq!(our_rules(saved).len(), 2);
}
