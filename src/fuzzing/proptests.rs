//! Property tests on stable for every parser the fuzz targets cover, through the same checks.
//!
//! The fuzzer finds its way from random bytes; these tests start from the structure instead:
//! requests, answers, extension headers, proxy replies, frame streams and compressed messages
//! built from their grammar with every part varied (valid and slightly wrong), so that the
//! checks' references are exercised where it matters on every `cargo test`, in a few seconds.
//! Case counts are bounded per test; proptest shrinks a failure to a minimal case and records
//! its seed under `proptest-regressions/`.

use proptest::prelude::*;
use proptest::sample::select;

use super::*;

/// Leading choice bytes, then the bytes under test: a fuzz input.
fn input(choices: &[u8], rest: &[u8]) -> Vec<u8> {
    [choices, rest].concat()
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// `name` with each letter's case from a bit of `case`.
fn any_case(name: &str, case: u32) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if case >> (i % 32) & 1 == 0 {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

/// A header line `Name: value` with the name in any case.
fn header(names: &'static [&'static str], values: Vec<String>) -> impl Strategy<Value = String> {
    (select(names), select(values), any::<u32>())
        .prop_map(|(name, value, case)| format!("{}: {value}\r\n", any_case(name, case)))
}

/// The canonical base64 of 16 random bytes, as clients send it, or a near miss.
fn key() -> impl Strategy<Value = String> {
    (any::<[u8; 16]>(), 0..12u8).prop_map(|(raw, how)| {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in raw.chunks(3) {
            let n = c.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - c.len()));
            for i in 0..=c.len() {
                s.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            }
        }
        s.push_str("==");
        match how {
            // Bits set past the 16 bytes: not the canonical encoding.
            0 => s.replace_range(21..22, "B"),
            1 => s.truncate(22),
            2 => s.push('='),
            3 => s.replace_range(3..4, "*"),
            _ => {}
        }
        s
    })
}

/// Mostly `valid` (seven times in eight), otherwise one of `odd`.
fn mostly(valid: &'static str, odd: &[&'static str]) -> impl Strategy<Value = String> {
    let mut all = vec![valid; 7 * odd.len().max(1)];
    all.extend_from_slice(odd);
    select(all).prop_map(String::from)
}

fn requests() -> impl Strategy<Value = String> {
    let method = mostly("GET", &["POST", "get"]);
    let version = mostly("HTTP/1.1", &["HTTP/1.0"]);
    let target = prop_oneof![
        3 => select(vec!["/", "/chat?room=a", "//x", "http://h/chat", "HTTPS://h:443/"]),
        1 => select(vec!["*", "ws://h/", "h:80", "ftp://h/"]),
    ];
    let host = mostly(
        "h",
        &[
            "h:9001",
            "[::1]:80",
            "127.0.0.1",
            "",
            "a b",
            "h:x",
            "[zz]",
            "u@h",
        ],
    );
    let upgrade = mostly(
        "websocket",
        &["WebSocket", "h2c, websocket", "websocket2", "web socket"],
    );
    let connection = mostly(
        "Upgrade",
        &["keep-alive, upgrade", "close", "upgrade2", ",Upgrade,"],
    );
    let version_header = mostly("13", &["8", "13, 8", "13,", " 13 ", "013", "13, 13"]);
    let keys = prop_oneof![6 => prop::collection::vec(key(), 1..2), 1 => prop::collection::vec(key(), 0..3)];
    let extra = prop::collection::vec(
        header(
            &[
                "Origin",
                "Sec-WebSocket-Protocol",
                "Sec-WebSocket-Extensions",
                "X-A",
            ],
            ["x", "chat, superchat", "permessage-deflate"]
                .map(String::from)
                .to_vec(),
        ),
        0..3,
    );
    // How often each required header is there: mostly once, sometimes missing or twice.
    let presence = prop::collection::vec(mostly("1", &["0", "2"]), 4);
    (
        (method, target, version),
        (host, upgrade, connection, version_header),
        keys,
        extra,
        presence,
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(
            |((m, t, v), (h, u, c, ver), keys, extra, presence, order, case)| {
                let mut lines: Vec<String> = Vec::new();
                let named = [
                    ("Host", h),
                    ("Upgrade", u),
                    ("Connection", c),
                    ("Sec-WebSocket-Version", ver),
                ];
                for ((name, value), times) in named.into_iter().zip(presence) {
                    let name = any_case(name, case);
                    let times = times.parse().unwrap_or(1);
                    lines.extend(std::iter::repeat_n(format!("{name}: {value}\r\n"), times));
                }
                lines.extend(
                    keys.into_iter()
                        .map(|k| format!("Sec-WebSocket-Key: {k}\r\n")),
                );
                lines.extend(extra);
                let mut o = order;
                for i in (1..lines.len()).rev() {
                    lines.swap(i, (o % (i as u64 + 1)) as usize);
                    o /= i as u64 + 1;
                }
                format!("{m} {t} {v}\r\n{}\r\n", lines.concat())
            },
        )
}

/// A server's answer to the upgrade, `{A}` standing for the right accept hash: each header
/// mostly there once with the right value, sometimes missing, twice, or wrong.
fn answers() -> impl Strategy<Value = String> {
    let status = mostly(
        "101 Switching Protocols",
        &["200 OK", "301 Moved", "101 x", "099 x"],
    );
    let upgrade = mostly("websocket", &["WebSocket", "websocket, h2c", "h2c"]);
    let connection = mostly("Upgrade", &["keep-alive, upgrade", "close"]);
    let accept = mostly("{A}", &["{A}x", "dGhlIHNhbXBsZSBub25jZQ=="]);
    let protocol = select(vec![
        "",
        "",
        "chat",
        "superchat",
        "other",
        "chat, superchat",
    ]);
    let extension = prop_oneof![2 => Just(String::new()), 1 => extensions()];
    let presence = prop::collection::vec(mostly("1", &["0", "2"]), 3);
    (
        status,
        (upgrade, connection, accept),
        (protocol, any::<bool>()),
        (extension, any::<bool>()),
        presence,
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(
            |(status, (u, c, a), (p, p2), (e, e2), presence, order, case)| {
                let mut lines: Vec<String> = Vec::new();
                let named = [
                    ("Upgrade", u),
                    ("Connection", c),
                    ("Sec-WebSocket-Accept", a),
                ];
                for ((name, value), times) in named.into_iter().zip(presence) {
                    let name = any_case(name, case);
                    let times = times.parse().unwrap_or(1);
                    lines.extend(std::iter::repeat_n(format!("{name}: {value}\r\n"), times));
                }
                if !p.is_empty() {
                    let times = 1 + usize::from(p2);
                    lines.extend(std::iter::repeat_n(
                        format!("Sec-WebSocket-Protocol: {p}\r\n"),
                        times,
                    ));
                }
                if !e.is_empty() {
                    let times = 1 + usize::from(e2);
                    lines.extend(std::iter::repeat_n(
                        format!("Sec-WebSocket-Extensions: {e}\r\n"),
                        times,
                    ));
                }
                let mut o = order;
                for i in (1..lines.len()).rev() {
                    lines.swap(i, (o % (i as u64 + 1)) as usize);
                    o /= i as u64 + 1;
                }
                format!("HTTP/1.1 {status}\r\n{}\r\n", lines.concat())
            },
        )
}

/// An extension header value from parts that are valid and nearly so.
fn extensions() -> impl Strategy<Value = String> {
    let name = select(vec![
        "permessage-deflate",
        "permessage-deflate",
        "Permessage-Deflate",
        "x-webkit-deflate-frame",
        "",
    ]);
    let key = select(vec![
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
        "mystery",
    ]);
    let value = select(vec![
        None,
        Some("8"),
        Some("10"),
        Some("15"),
        Some("16"),
        Some("010"),
        Some("\"9\""),
        Some("\"1\\2\""),
        Some("\"1\\\\2\""),
        Some("\"\""),
        Some("\"12"),
        Some("a=b"),
    ]);
    let space = select(vec!["", " ", "\t", "  "]);
    let param = (key, value, space.clone()).prop_map(|(k, v, s)| match v {
        Some(v) => format!(";{s}{k}{s}={s}{v}"),
        None => format!(";{s}{k}"),
    });
    let element = (name, prop::collection::vec(param, 0..4))
        .prop_map(|(name, params)| format!("{name}{}", params.concat()));
    (prop::collection::vec(element, 0..3), space)
        .prop_map(|(elements, s)| elements.join(&format!("{s},{s}")))
}

/// RFC 7692 settings as `deflate_params::settings` reads them from two bytes.
fn settings() -> impl Strategy<Value = [u8; 2]> {
    (any::<bool>(), any::<bool>(), 0..16u8, 0..16u8)
        .prop_map(|(c, s, cb, sb)| [u8::from(c) << 4 | u8::from(s) << 5 | cb, sb])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn head_reader_random_bytes(choice: u8, cuts: u8, rest in bytes(700)) {
        http_head(&input(&[choice, cuts], &rest));
    }

    #[test]
    fn head_reader_heads_in_pieces(
        choice: u8,
        cuts: u8,
        lines in prop::collection::vec("[A-Za-z-]{1,12}: [ -~]{0,40}", 0..12),
        ending in select(vec!["\r\n\r\n", "\r\n\r\n", "\n\n", "\r\n"]),
        after in bytes(64),
    ) {
        let head = format!("GET / HTTP/1.1\r\n{}{ending}", lines.join("\r\n"));
        http_head(&input(&[choice, cuts], &[head.as_bytes(), &after].concat()));
    }

    #[test]
    fn upgrade_requests_are_judged_as_rfc_6455_says(request in requests(), after in bytes(8)) {
        upgrade_request(&[request.as_bytes(), &after].concat());
    }

    #[test]
    fn upgrade_answers_are_judged_as_rfc_6455_says(
        choice: u8,
        offer in settings(),
        cuts: [u8; 2],
        answer in answers(),
        after in bytes(16),
    ) {
        upgrade_answer(&input(
            &[choice, offer[0], offer[1], cuts[0], cuts[1]],
            &[answer.as_bytes(), &after].concat(),
        ));
    }

    #[test]
    fn valid_upgrade_answers_open(
        choice: u8,
        offer in settings(),
        cuts: [u8; 2],
        extensions in select(vec!["", "permessage-deflate", "permessage-deflate; server_no_context_takeover"]),
        subprotocol in select(vec!["", "chat"]),
    ) {
        // Everything RFC 6455 4.1 asks for, whatever the order and case: the connection opens.
        let mut answer = String::from(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\n\
             Connection: keep-alive\r\nCONNECTION: Upgrade\r\nSec-WebSocket-Accept: {A}\r\n",
        );
        let mut choice = choice & !8;
        if !subprotocol.is_empty() {
            answer.push_str(&format!("Sec-WebSocket-Protocol: {subprotocol}\r\n"));
            choice |= 1;
        }
        let deflate = deflate_params::settings(offer[0], offer[1]);
        let accepted = !extensions.is_empty()
            && deflate_params::client_check(&deflate, &deflate_params::parse(&[extensions]).unwrap())
                .is_some();
        if accepted {
            answer.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n"));
            choice |= 4;
        }
        answer.push_str("\r\n");
        let data = input(&[choice, offer[0], offer[1], cuts[0], cuts[1]], answer.as_bytes());
        upgrade_answer(&data);
        // And the client says so, not only the reference.
        let mut config = crate::Config::builder();
        if choice & 1 != 0 {
            config = config.subprotocol("chat");
        }
        if choice & 4 != 0 {
            config = config.deflate(Some(deflate));
        }
        let config = config.build().unwrap();
        let url = url::Url::parse("ws://h/").unwrap();
        let mut upgrade = crate::handshake::ClientUpgrade::new(&url, &config);
        let accept = tungstenite::handshake::derive_accept_key(upgrade.key().as_bytes());
        let answer = answer.replace("{A}", &accept);
        let mut wire = input::Wire::new(answer.as_bytes(), input::End::Closed, cuts[0], cuts[1]);
        let opened = loop {
            if let Some(done) = upgrade.advance(&mut wire, &config).transpose() {
                break done;
            }
        };
        let (handshake, _) = opened.unwrap_or_else(|e| panic!("{answer:?}: {e}"));
        prop_assert_eq!(handshake.subprotocol(), (!subprotocol.is_empty()).then_some("chat"));
        prop_assert_eq!(handshake.deflate().is_some(), accepted);
    }

    #[test]
    fn extension_headers_follow_rfc_7692(
        client in settings(),
        server in settings(),
        values in prop::collection::vec(extensions(), 0..3),
    ) {
        deflate_params(&input(&[client[0], client[1], server[0], server[1]], values.join("\n").as_bytes()));
    }

    #[test]
    fn http_connect_answers_in_pieces(
        choice: u8,
        cuts: [u8; 2],
        version in select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2", "SSH-2.0"]),
        status in select(vec!["200 Connection established", "204 OK", "407 Auth", "502 Bad", "99 x"]),
        lines in prop::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,20}", 0..4),
        cut in 0..3usize,
        after in bytes(8),
    ) {
        let mut reply = format!("{version} {status}\r\n{}\r\n", lines.iter().map(|l| format!("{l}\r\n")).collect::<String>()).into_bytes();
        // The proxy may hang up early, or send more.
        match cut {
            0 => reply.truncate(reply.len() / 2),
            1 => reply.extend_from_slice(&after),
            _ => {}
        }
        proxy_http(&input(&[choice, cuts[0], cuts[1]], &reply));
    }

    #[test]
    fn socks5_replies_in_pieces(
        choice: u8,
        cuts: [u8; 2],
        method in select(vec![0u8, 0, 2, 0xff, 1]),
        auth in select(vec![0u8, 0, 1]),
        code in select(vec![0u8, 0, 0, 1, 5]),
        kind in select(vec![1u8, 3, 4, 9]),
        name in "[a-z.]{0,20}",
        versions in select(vec![(5u8, 5u8), (5, 5), (5, 5), (4, 5), (5, 1)]),
        cut: u16,
        after in bytes(8),
    ) {
        let mut reply = vec![versions.0, method];
        if method == 2 {
            reply.extend([1, auth]);
        }
        reply.extend([versions.1, code, 0, kind]);
        match kind {
            1 => reply.extend([127, 0, 0, 1]),
            3 => {
                reply.push(name.len() as u8);
                reply.extend_from_slice(name.as_bytes());
            }
            _ => reply.extend([0; 16]),
        }
        reply.extend([0x1f, 0x90]);
        // Mostly whole; sometimes the proxy hangs up part way.
        if cut % 4 == 0 {
            reply.truncate(usize::from(cut) % reply.len());
        }
        reply.extend_from_slice(&after);
        proxy_socks5(&input(&[choice, cuts[0], cuts[1]], &reply));
    }

    #[test]
    fn compressed_messages_inflate_exactly(
        choice: u8,
        limits: u8,
        cuts: u8,
        reads: u8,
        messages in prop::collection::vec((any::<u8>(), any::<u8>(), bytes(40)), 0..6),
    ) {
        let mut rest = Vec::new();
        for (kind, len, data) in messages {
            rest.extend([kind, len]);
            rest.extend(data.iter().take(usize::from(len)));
        }
        inflate(&input(&[choice | 2, limits, cuts, reads], &rest));
    }

    #[test]
    fn random_frames_pass_or_fail_typed(choice: u8, limits: u8, cuts: u8, reads: u8, wire in bytes(600)) {
        inflate(&input(&[choice & !2, limits, cuts, reads], &wire));
    }

    #[test]
    fn the_close_is_found_where_a_reference_parse_finds_it(
        cuts: u8,
        frames in prop::collection::vec(
            (select(vec![0x81u8, 0x82, 0x01, 0x80, 0x89, 0x8A, 0xC1, 0x88, 0x09, 0x83, 0x8B]),
             any::<u8>(), 0..130u8),
            0..8,
        ),
    ) {
        let rest: Vec<u8> = frames.into_iter().flat_map(|(b0, shape, len)| [b0, shape, len]).collect();
        frame_skipper(&input(&[1, cuts], &rest));
    }

    #[test]
    fn lingering_over_random_bytes(cuts: u8, rest in bytes(300)) {
        frame_skipper(&input(&[0, cuts], &rest));
    }

    #[test]
    fn close_codes_and_reasons_follow_rfc_6455(code: u16, reason in ".{0,130}") {
        close(&input(&code.to_be_bytes(), reason.as_bytes()));
    }

    #[test]
    fn close_reasons_that_are_not_text(code in 990..5010u16, reason in bytes(130)) {
        close(&input(&code.to_be_bytes(), &reason));
    }
}
