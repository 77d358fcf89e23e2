//! The envelope of a JSON-RPC message, as the relay and the agent read it to route and
//! count a message they otherwise carry as opaque bytes (the tunnel never reads it).
//!
//! A fast path for large messages: walks the top-level object, keeps the raw text of the
//! members routing reads (`id`, `method`, `params`, `error`) and checks every
//! other value as JSON without building anything, looking at many bytes of a string per
//! step (`find_special`). serde_json's own skipping looks at 8 bytes at a time: over one
//! 10 MiB result, timed one after the other, it took 2.4–3.8 ms and this 1.0–2.4 ms.
//!
//! It accepts only what serde_json accepts, by the same rules as its skipping (a skipped
//! string's bytes are not decoded as UTF-8, its escapes and control characters are
//! checked). Whatever it is not sure of (an escaped or repeated key, deep nesting, any
//! error) it leaves to serde_json, which decides; so it never has to say why a message is
//! refused. Each caller keeps serde_json as its other path, and property tests in the
//! relay compare the two.

/// The members of the top-level object that routing reads, as raw JSON text (`null`
/// included).
#[derive(Debug, Default, PartialEq)]
pub struct Members<'a> {
    /// `id`.
    pub id: Option<&'a [u8]>,
    /// `method`.
    pub method: Option<&'a [u8]>,
    /// `params`.
    pub params: Option<&'a [u8]>,
    /// Whether there is a `result`, whatever its value.
    pub result: bool,
    /// `error`.
    pub error: Option<&'a [u8]>,
}

/// Not for the fast path: serde_json decides.
#[derive(Debug, PartialEq)]
pub struct Unsure;

/// Messages from this size up are worth the fast path: below it, serde_json's own pass
/// costs about as little and a caller that tries both pays twice when this one is unsure.
pub const FAST_PATH_FROM: usize = 16 * 1024;

/// A member's raw text as serde_json reads it into an optional raw value: `null` as no
/// member, else the text, which must be UTF-8. `None` where serde_json would refuse it.
pub fn raw_value(member: Option<&[u8]>) -> Option<Option<&str>> {
    match member {
        None | Some(b"null") => Some(None),
        Some(text) => std::str::from_utf8(text).ok().map(Some),
    }
}

/// Nesting deeper than this is left to serde_json (whose limit is 128).
const MAX_DEPTH: u32 = 100;

/// The envelope of `message`, if it is a JSON object this path is sure of.
pub fn members(message: &[u8]) -> Result<Members<'_>, Unsure> {
    let mut scan = Scan {
        bytes: message,
        at: 0,
    };
    let mut members = Members::default();
    scan.whitespace();
    scan.expect(b'{')?;
    scan.whitespace();
    if scan.peek() == Some(b'}') {
        scan.at += 1;
    } else {
        loop {
            scan.whitespace();
            scan.expect(b'"')?;
            let key = scan.key()?;
            scan.whitespace();
            scan.expect(b':')?;
            scan.whitespace();
            let start = scan.at;
            scan.value(1)?;
            let value = &message[start..scan.at];
            // serde_json refuses a field named twice.
            match key {
                b"id" => once(&mut members.id, value)?,
                b"method" => once(&mut members.method, value)?,
                b"params" => once(&mut members.params, value)?,
                b"error" => once(&mut members.error, value)?,
                b"result" if std::mem::replace(&mut members.result, true) => return Err(Unsure),
                _ => {}
            }
            scan.whitespace();
            match scan.next()? {
                b',' => {}
                b'}' => break,
                _ => return Err(Unsure),
            }
        }
    }
    scan.whitespace();
    if scan.at == message.len() {
        Ok(members)
    } else {
        Err(Unsure)
    }
}

fn once<'a>(slot: &mut Option<&'a [u8]>, value: &'a [u8]) -> Result<(), Unsure> {
    match slot.replace(value) {
        Some(_) => Err(Unsure),
        None => Ok(()),
    }
}

struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Result<u8, Unsure> {
        let byte = self.peek().ok_or(Unsure)?;
        self.at += 1;
        Ok(byte)
    }

    fn expect(&mut self, byte: u8) -> Result<(), Unsure> {
        if self.next()? == byte {
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// A top-level key, after its opening quote: its raw bytes. serde_json decodes keys,
    /// so one with an escape or that is not UTF-8 is left to it.
    fn key(&mut self) -> Result<&'a [u8], Unsure> {
        let start = self.at;
        self.string()?;
        let key = &self.bytes[start..self.at - 1];
        if key.contains(&b'\\') || std::str::from_utf8(key).is_err() {
            return Err(Unsure);
        }
        Ok(key)
    }

    /// The rest of a string, after its opening quote.
    fn string(&mut self) -> Result<(), Unsure> {
        loop {
            self.at += find_special(&self.bytes[self.at..]).ok_or(Unsure)?;
            match self.next()? {
                b'"' => return Ok(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            if !self.next()?.is_ascii_hexdigit() {
                                return Err(Unsure);
                            }
                        }
                    }
                    _ => return Err(Unsure),
                },
                // A control character, which a string may not hold raw.
                _ => return Err(Unsure),
            }
        }
    }

    /// One value, whitespace before it already skipped; `depth` counts the containers
    /// it is in.
    fn value(&mut self, depth: u32) -> Result<(), Unsure> {
        match self.next()? {
            b'"' => self.string(),
            b'{' => self.container(depth, b'}', true),
            b'[' => self.container(depth, b']', false),
            b't' => self.literal(b"rue"),
            b'f' => self.literal(b"alse"),
            b'n' => self.literal(b"ull"),
            b'-' => {
                let first = self.next()?;
                self.number(first)
            }
            first @ b'0'..=b'9' => self.number(first),
            _ => Err(Unsure),
        }
    }

    /// An object's members or an array's elements, after the opening bracket.
    fn container(&mut self, depth: u32, close: u8, object: bool) -> Result<(), Unsure> {
        if depth >= MAX_DEPTH {
            return Err(Unsure);
        }
        self.whitespace();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.whitespace();
            if object {
                self.expect(b'"')?;
                self.string()?;
                self.whitespace();
                self.expect(b':')?;
                self.whitespace();
            }
            self.value(depth + 1)?;
            self.whitespace();
            match self.next()? {
                b',' => {}
                byte if byte == close => return Ok(()),
                _ => return Err(Unsure),
            }
        }
    }

    fn literal(&mut self, rest: &[u8]) -> Result<(), Unsure> {
        if self.bytes[self.at..].starts_with(rest) {
            self.at += rest.len();
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// A number after its sign, by JSON's grammar: no leading zero, digits after a point
    /// and in an exponent.
    fn number(&mut self, first: u8) -> Result<(), Unsure> {
        match first {
            b'0' if matches!(self.peek(), Some(b'0'..=b'9')) => return Err(Unsure),
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return Err(Unsure),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), Unsure> {
        let start = self.at;
        self.digits();
        if self.at > start { Ok(()) } else { Err(Unsure) }
    }
}

/// Where the first byte that ends a string's plain run is: a quote, a backslash, or a
/// control character (below 0x20, which a string may not hold raw). Looks at 64 bytes at
/// a time without an early exit inside them, so that the compiler checks many bytes per
/// instruction: one pass, at about the speed of `memchr` for two bytes.
fn find_special(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 64;
    fn special(byte: u8) -> bool {
        (byte == b'"') | (byte == b'\\') | (byte < 0x20)
    }
    let mut at = 0;
    for block in bytes.chunks_exact(BLOCK) {
        if block
            .iter()
            .fold(false, |found, &byte| found | special(byte))
        {
            break;
        }
        at += BLOCK;
    }
    bytes[at..]
        .iter()
        .position(|&byte| special(byte))
        .map(|found| at + found)
}

/// JSON syntax checked as a text arrives in parts, for a message a hop sends on before it
/// has all of it: by the grammar serde_json reads with, strings unchecked as UTF-8 as in
/// its skipping (see the module's text). Whatever the cuts, [`Self::push`] and
/// [`Self::finish`] accept exactly the texts serde_json accepts as one value, at any depth
/// as its skipping does (so the depth is bounded only by the text's length); the relay's
/// property test compares the two. Inside a string, which is
/// most of a long answer, it moves as [`find_special`] does, many bytes per step.
#[derive(Debug, Clone)]
pub struct Syntax {
    state: State,
    /// The containers the text is in, innermost last: `true` for an object.
    open: Vec<bool>,
}

/// A text that is not one JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value is due: at the start, after `:` or `,` in an array.
    Value,
    /// After `[`: a value or `]`.
    FirstElement,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// In a string (a key's when `key`); `escape` after a backslash, `hex` digits of a
    /// `\u` escape still due.
    String { key: bool, escape: bool, hex: u8 },
    /// The rest of `true`, `false` or `null`.
    Literal { rest: &'static [u8] },
    /// In a number.
    Number(Number),
    /// After a value: `,`, a closing bracket, or the end.
    AfterValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    /// After `-`.
    Sign,
    /// After a leading `0`.
    Zero,
    /// In the integer digits.
    Integer,
    /// After `.`.
    Point,
    /// In the fraction's digits.
    Fraction,
    /// After `e` or `E`.
    Exponent,
    /// After the exponent's sign.
    ExponentSign,
    /// In the exponent's digits.
    ExponentDigits,
}

impl Default for Syntax {
    fn default() -> Self {
        Self {
            state: State::Value,
            open: Vec::new(),
        }
    }
}

impl Syntax {
    /// Checks the next part of the text.
    pub fn push(&mut self, mut part: &[u8]) -> Result<(), NotJson> {
        while let Some((&byte, rest)) = part.split_first() {
            if let State::String {
                escape: false,
                hex: 0,
                ..
            } = self.state
            {
                match find_special(part) {
                    Some(at) => part = &part[at..],
                    None => return Ok(()),
                }
                let (&special, rest) = part.split_first().ok_or(NotJson)?;
                self.string_byte(special)?;
                part = rest;
                continue;
            }
            self.byte(byte)?;
            part = rest;
        }
        Ok(())
    }

    /// The text has ended: whether it was one whole value.
    pub fn finish(mut self) -> Result<(), NotJson> {
        if let State::Number(_) = self.state {
            // A number ends where something else begins, the end included.
            self.byte(b' ')?;
        }
        match self.state {
            State::AfterValue if self.open.is_empty() => Ok(()),
            _ => Err(NotJson),
        }
    }

    fn byte(&mut self, byte: u8) -> Result<(), NotJson> {
        let whitespace = matches!(byte, b' ' | b'\n' | b'\t' | b'\r');
        self.state = match self.state {
            State::String { .. } => return self.string_byte(byte),
            State::Literal { rest } => match rest.split_first() {
                Some((&want, more)) if want == byte => match more {
                    [] => State::AfterValue,
                    _ => State::Literal { rest: more },
                },
                _ => return Err(NotJson),
            },
            State::Number(number) => match self.number(number, byte) {
                Some(next) => State::Number(next),
                None => {
                    // The number ended at `byte`, which comes after a value.
                    if matches!(
                        number,
                        Number::Sign | Number::Point | Number::Exponent | Number::ExponentSign
                    ) {
                        return Err(NotJson);
                    }
                    self.state = State::AfterValue;
                    return self.byte(byte);
                }
            },
            _ if whitespace => return Ok(()),
            State::Value => self.value(byte)?,
            State::FirstElement if byte == b']' => self.close(false)?,
            State::FirstElement => self.value(byte)?,
            State::FirstKey if byte == b'}' => self.close(true)?,
            State::FirstKey | State::Key if byte == b'"' => State::String {
                key: true,
                escape: false,
                hex: 0,
            },
            State::Colon if byte == b':' => State::Value,
            State::AfterValue => match (self.open.last(), byte) {
                (Some(true), b',') => State::Key,
                (Some(false), b',') => State::Value,
                (Some(true), b'}') => self.close(true)?,
                (Some(false), b']') => self.close(false)?,
                _ => return Err(NotJson),
            },
            State::FirstKey | State::Key | State::Colon => return Err(NotJson),
        };
        Ok(())
    }

    /// The state after the first byte of a value.
    fn value(&mut self, byte: u8) -> Result<State, NotJson> {
        Ok(match byte {
            b'"' => State::String {
                key: false,
                escape: false,
                hex: 0,
            },
            b'{' | b'[' => {
                self.open.push(byte == b'{');
                if byte == b'{' {
                    State::FirstKey
                } else {
                    State::FirstElement
                }
            }
            b't' => State::Literal { rest: b"rue" },
            b'f' => State::Literal { rest: b"alse" },
            b'n' => State::Literal { rest: b"ull" },
            b'-' => State::Number(Number::Sign),
            b'0' => State::Number(Number::Zero),
            b'1'..=b'9' => State::Number(Number::Integer),
            _ => return Err(NotJson),
        })
    }

    fn close(&mut self, object: bool) -> Result<State, NotJson> {
        match self.open.pop() {
            Some(open) if open == object => Ok(State::AfterValue),
            _ => Err(NotJson),
        }
    }

    /// A byte of a string that is not plain: a quote, a backslash, a control character,
    /// or a byte of an escape.
    fn string_byte(&mut self, byte: u8) -> Result<(), NotJson> {
        let State::String { key, escape, hex } = self.state else {
            return Err(NotJson);
        };
        self.state = if hex > 0 {
            if !byte.is_ascii_hexdigit() {
                return Err(NotJson);
            }
            State::String {
                key,
                escape: false,
                hex: hex - 1,
            }
        } else if escape {
            match byte {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => State::String {
                    key,
                    escape: false,
                    hex: 0,
                },
                b'u' => State::String {
                    key,
                    escape: false,
                    hex: 4,
                },
                _ => return Err(NotJson),
            }
        } else {
            match byte {
                b'"' if key => State::Colon,
                b'"' => State::AfterValue,
                b'\\' => State::String {
                    key,
                    escape: true,
                    hex: 0,
                },
                // A control character, which a string may not hold raw.
                0..0x20 => return Err(NotJson),
                _ => State::String {
                    key,
                    escape: false,
                    hex: 0,
                },
            }
        };
        Ok(())
    }

    /// A number's next state with `byte`, or `None` if `byte` is not part of it.
    fn number(&self, number: Number, byte: u8) -> Option<Number> {
        let digit = byte.is_ascii_digit();
        Some(match (number, byte) {
            (Number::Sign, b'0') => Number::Zero,
            (Number::Sign, _) if digit => Number::Integer,
            (Number::Integer, _) if digit => Number::Integer,
            (Number::Zero | Number::Integer, b'.') => Number::Point,
            (Number::Point | Number::Fraction, _) if digit => Number::Fraction,
            (Number::Zero | Number::Integer | Number::Fraction, b'e' | b'E') => Number::Exponent,
            (Number::Exponent, b'+' | b'-') => Number::ExponentSign,
            (Number::Exponent | Number::ExponentSign | Number::ExponentDigits, _) if digit => {
                Number::ExponentDigits
            }
            _ => return None,
        })
    }
}

/// The id of an answer read from its first bytes (canonical JSON text), when they are
/// `{"jsonrpc":"2.0","id":<id>,"result":` with the first two members in either order and
/// any JSON whitespace: the shape rmcp and serde_json-based servers write. The id must be
/// an integer or a string without escapes. `None` for anything else, including an answer
/// whose result comes first (the TypeScript SDK's order): it is then read whole.
pub fn answer_head(start: &[u8]) -> Option<String> {
    let mut rest = skip_whitespace(start).strip_prefix(b"{")?;
    let mut id = None;
    let mut version = false;
    loop {
        let (key, after) = plain_string(skip_whitespace(rest))?;
        rest = skip_whitespace(skip_whitespace(after).strip_prefix(b":")?);
        match key {
            b"result" => return id.filter(|_| version),
            b"jsonrpc" if !version => {
                let (value, after) = plain_string(rest)?;
                if value != b"2.0" {
                    return None;
                }
                version = true;
                rest = after;
            }
            b"id" if id.is_none() => {
                let len = match rest.first()? {
                    b'"' => plain_string(rest)?.0.len() + 2,
                    _ => integer_len(rest)?,
                };
                id = Some(std::str::from_utf8(&rest[..len]).ok()?.to_owned());
                rest = &rest[len..];
            }
            _ => return None,
        }
        rest = skip_whitespace(rest).strip_prefix(b",")?;
    }
}

fn skip_whitespace(text: &[u8]) -> &[u8] {
    let start = text
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(text.len());
    &text[start..]
}

/// A JSON string with no escapes at the start of `text`: its content and what follows it.
fn plain_string(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = text.strip_prefix(b"\"")?;
    let end = body
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    (body[end] == b'"').then(|| (&body[..end], &body[end + 1..]))
}

/// The length of a JSON integer at the start of `text`, if one is there and ends in view.
fn integer_len(text: &[u8]) -> Option<usize> {
    let sign = usize::from(text.first() == Some(&b'-'));
    let digits = text[sign..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let end = sign + digits;
    let leading_zero = digits > 1 && text[sign] == b'0';
    let ends = text
        .get(end)
        .is_some_and(|b| matches!(b, b',' | b' ' | b'\t' | b'\n' | b'\r'));
    (digits > 0 && !leading_zero && ends).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_as_raw_text() {
        let message = br#" {"jsonrpc":"2.0","id": "a\"b" ,"result":{"content":[{"type":"text","text":"x\u00e9\n"}],"n":[-0.5e+3,true,null,{}]},"x":[]} "#;
        assert_eq!(
            members(message),
            Ok(Members {
                id: Some(br#""a\"b""#),
                result: true,
                ..Members::default()
            })
        );
        let message = br#"{"method":"tools/call","params":{"name":"q"},"id":7,"error":null}"#;
        let found = members(message).unwrap();
        assert_eq!(found.method, Some(&br#""tools/call""#[..]));
        assert_eq!(found.params, Some(&br#"{"name":"q"}"#[..]));
        assert_eq!(found.id, Some(&b"7"[..]));
        assert_eq!(found.error, Some(&b"null"[..]));
        assert!(!found.result);
    }

    #[test]
    fn anything_unusual_is_left_to_serde_json() {
        for message in [
            &b""[..],
            b"[]",
            b"{",
            b"{} x",
            br#"{"id":1,}"#,
            br#"{"id":1,"id":2}"#,
            br#"{"result":1,"result":2}"#,
            br#"{"i\u0064":1}"#,
            br#"{"id":01}"#,
            br#"{"id":1.}"#,
            br#"{"id":1e}"#,
            br#"{"id":-}"#,
            br#"{"x":tru}"#,
            br#"{"x":"\q"}"#,
            br#"{"x":"\u12G4"}"#,
            b"{\"x\":\"a\x01b\"}",
            br#"{"x":[1 2]}"#,
            br#"{"x":{"a" 1}}"#,
            br#"{"x":"unterminated}"#,
        ] {
            assert_eq!(
                members(message),
                Err(Unsure),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(members(deep.as_bytes()), Err(Unsure));
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(98), "]".repeat(98));
        assert!(members(deep.as_bytes()).is_ok());
    }

    #[test]
    fn an_answers_id_is_read_from_its_head_when_it_comes_first() {
        let head = |text: &str| answer_head(text.as_bytes());
        assert_eq!(
            head(r#"{"jsonrpc":"2.0","id":7,"result":{"con"#),
            Some("7".into())
        );
        assert_eq!(
            head(r#"{"id":"a-1","jsonrpc":"2.0","result":"#),
            Some(r#""a-1""#.into())
        );
        assert_eq!(
            head("{ \"jsonrpc\" : \"2.0\" ,\n\t\"id\" : -12 , \"result\":"),
            Some("-12".into())
        );
        assert_eq!(
            head(r#"{"jsonrpc":"2.0","id":0,"result":"#),
            Some("0".into())
        );
        // Whatever else is read whole.
        for other in [
            r#"{"result":{"x":1},"jsonrpc":"2.0","id":7}"#,
            r#"{"jsonrpc":"2.0","id":7,"error":{"code":1"#,
            r#"{"jsonrpc":"2.0","method":"x","id":7,"result":"#,
            r#"{"jsonrpc":"2.0","id":7,"id":8,"result":"#,
            r#"{"jsonrpc":"1.0","id":7,"result":"#,
            r#"{"id":7,"result":"#,
            r#"{"jsonrpc":"2.0","id":"a\"b","result":"#,
            r#"{"jsonrpc":"2.0","id":07,"result":"#,
            r#"{"jsonrpc":"2.0","id":1.5,"result":"#,
            r#"{"jsonrpc":"2.0","id":null,"result":"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"result":"#,
            r#"{"json\u0072pc":"2.0","id":7,"result":"#,
            r#"{"jsonrpc":"2.0","id":7"#,
            r#"[{"jsonrpc":"2.0","id":7,"result":"#,
            "",
        ] {
            assert_eq!(head(other), None, "{other}");
        }
    }

    #[test]
    fn syntax_in_parts_accepts_json_and_refuses_the_rest_wherever_it_is_cut() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let good = [
            "-0",
            "0",
            "1.5",
            "-12.5e-3",
            "1E+5",
            "1e400",
            "[]",
            "{}",
            " [ 1 , 2 ] \n",
            "true",
            "false",
            "null",
            r#""a\"b\\c\/\b\f\n\r\t\u12aF é""#,
            r#"{"a":{"b":[1,{"c":null}]},"d":""}"#,
            "\"\u{7f}é\"",
        ];
        let bad = [
            "",
            " ",
            "01",
            "-",
            "-01",
            "1.",
            ".5",
            "+1",
            "1e",
            "1e+",
            "1.e5",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            "{1:2}",
            "tru",
            "truex",
            "nul",
            "nulll",
            r#""\u12""#,
            r#""\u12g4""#,
            r#""\x""#,
            "\"a\u{1}\"",
            "\"a\nb\"",
            "\"open",
            "1 2",
            "[1]]",
            r#"{"a":1}}"#,
            "[{]}",
            "[}",
            "{]",
            "\0",
            "[1 2]",
        ];
        let mut cases: Vec<(String, bool)> = good.iter().map(|t| (t.to_string(), true)).collect();
        cases.extend(bad.iter().map(|t| (t.to_string(), false)));
        cases.push((deep(1000), true));
        cases.push((format!("{}]", deep(1000)), false));
        for (text, json) in cases {
            let text = text.as_bytes();
            assert_eq!(
                serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok(),
                json,
                "{}",
                String::from_utf8_lossy(text)
            );
            for cut in 0..=text.len() {
                let mut syntax = Syntax::default();
                let checked = syntax
                    .push(&text[..cut])
                    .and_then(|()| syntax.push(&text[cut..]))
                    .and_then(|()| syntax.finish());
                assert_eq!(
                    checked.is_ok(),
                    json,
                    "{} cut at {cut}",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }
}
