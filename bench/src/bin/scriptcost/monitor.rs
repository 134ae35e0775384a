//! Reading `redis-cli monitor` output: one command per line, its arguments quoted as Redis'
//! `sdscatrepr` writes them (`\\`, `\"`, `\n`, `\r`, `\t`, `\a`, `\b`, `\xHH`).

/// One command as MONITOR printed it.
#[derive(Debug, PartialEq)]
pub struct Line {
    /// Run by a script (`[0 lua]`), not sent by a client.
    pub from_script: bool,
    pub args: Vec<Vec<u8>>,
}

/// `None` for a line that is not a command (MONITOR's `OK`, a blank line).
pub fn parse(line: &str) -> Option<Line> {
    let bracket = line.find('[')?;
    let close = bracket + line[bracket..].find(']')?;
    let from_script = line[bracket..close].ends_with(" lua");
    let mut args = Vec::new();
    let bytes = line.as_bytes();
    let mut i = close + 1;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut arg = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                let (byte, used) = match bytes[i + 1] {
                    b'n' => (b'\n', 2),
                    b'r' => (b'\r', 2),
                    b't' => (b'\t', 2),
                    b'a' => (7, 2),
                    b'b' => (8, 2),
                    b'x' => (
                        line.get(i + 2..i + 4)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .unwrap_or(b'?'),
                        4,
                    ),
                    other => (other, 2),
                };
                arg.push(byte);
                i += used;
            } else {
                arg.push(bytes[i]);
                i += 1;
            }
        }
        args.push(arg);
        i += 1;
    }
    (!args.is_empty()).then_some(Line { from_script, args })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_command_is_read_with_its_escapes_undone() {
        let line = r#"1733500000.123456 [0 127.0.0.1:53422] "SET" "k" "token\nord_1\"x\\\x01" "PX" "5""#;
        let parsed = parse(line).expect("a command");
        assert!(!parsed.from_script);
        assert_eq!(
            parsed.args,
            vec![
                b"SET".to_vec(),
                b"k".to_vec(),
                b"token\nord_1\"x\\\x01".to_vec(),
                b"PX".to_vec(),
                b"5".to_vec()
            ]
        );
    }

    #[test]
    fn a_scripts_command_is_marked_and_a_non_command_is_none() {
        let parsed = parse(r#"1733500000.1 [0 lua] "GET" "k""#).expect("a command");
        assert!(parsed.from_script);
        assert_eq!(parsed.args, vec![b"GET".to_vec(), b"k".to_vec()]);
        assert_eq!(parse("OK"), None);
        assert_eq!(parse(""), None);
    }
}
