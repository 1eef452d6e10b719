//! Splits configuration text into lines of words, as HAProxy does:
//! whitespace separates words, `#` starts a comment, `"..."` quotes with
//! escapes and `${VAR}` expansion, `'...'` quotes literally, and `\`
//! escapes the next character outside single quotes.

use std::fmt;

/// One non-empty line of words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub line: usize,
    pub words: Vec<String>,
}

/// A lexing error on a line (the caller adds the file name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

/// Splits `text` into lines of words, expanding environment variables
/// through `env`.
pub fn lex(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Line>, LexError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let words = lex_line(raw, env).map_err(|msg| LexError { line, msg })?;
        if !words.is_empty() {
            out.push(Line { line, words });
        }
    }
    Ok(out)
}

#[derive(PartialEq, Clone, Copy)]
enum Quote {
    None,
    Single,
    Double,
}

fn lex_line(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>, String> {
    let chars: Vec<char> = raw.chars().collect();
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    // Whether a word is being built (a quoted empty string is still a word).
    let mut in_word = false;
    let mut quote = Quote::None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Quote::Single => {
                if c == '\'' {
                    quote = Quote::None;
                } else {
                    cur.push(c);
                }
                i += 1;
            }
            Quote::None | Quote::Double => {
                if quote == Quote::None && (c == ' ' || c == '\t') {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                    i += 1;
                    continue;
                }
                if quote == Quote::None && c == '#' {
                    break;
                }
                in_word = true;
                match c {
                    '\\' => {
                        let next = chars.get(i + 1).copied();
                        match next {
                            None => {
                                return Err(
                                    "a backslash ends the line; expected a character to escape"
                                        .into(),
                                );
                            }
                            Some('n') => cur.push('\n'),
                            Some('r') => cur.push('\r'),
                            Some('t') => cur.push('\t'),
                            Some('x') => {
                                let hex: String = chars.iter().skip(i + 2).take(2).collect();
                                let v = u8::from_str_radix(&hex, 16).map_err(|_| {
                                    format!(
                                        "invalid escape '\\x{hex}', expected two hexadecimal digits"
                                    )
                                })?;
                                cur.push(v as char);
                                i += 2;
                            }
                            // HAProxy keeps unknown escapes as written (`\1`, `\.`).
                            Some(other)
                                if other == ' '
                                    || other == '#'
                                    || other == '\\'
                                    || other == '"'
                                    || other == '\''
                                    || other == '$' =>
                            {
                                cur.push(other)
                            }
                            Some(other) => {
                                cur.push('\\');
                                cur.push(other);
                            }
                        }
                        i += 2;
                    }
                    '\'' if quote == Quote::None => {
                        quote = Quote::Single;
                        i += 1;
                    }
                    '"' => {
                        quote = if quote == Quote::Double {
                            Quote::None
                        } else {
                            Quote::Double
                        };
                        i += 1;
                    }
                    '$' if quote == Quote::Double && chars.get(i + 1) == Some(&'{') => {
                        let close =
                            chars[i + 2..]
                                .iter()
                                .position(|&c| c == '}')
                                .ok_or_else(|| {
                                    "unterminated '${', expected '}' after the variable name"
                                        .to_string()
                                })?;
                        let inner: String = chars[i + 2..i + 2 + close].iter().collect();
                        let (name, default) = match inner.split_once('-') {
                            Some((n, d)) => (n.to_string(), Some(d.to_string())),
                            None => (inner.clone(), None),
                        };
                        // `${VAR[,]}` splits the value into several words on commas.
                        let (name, split) = match name.strip_suffix("[,]") {
                            Some(n) => (n.to_string(), true),
                            None => (name, false),
                        };
                        if name.is_empty()
                            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        {
                            return Err(format!(
                                "invalid environment variable name '{name}', expected letters, digits or '_'"
                            ));
                        }
                        let value = env(&name).or(default).unwrap_or_default();
                        if split {
                            let mut parts = value.split(',');
                            if let Some(first) = parts.next() {
                                cur.push_str(first);
                            }
                            for p in parts {
                                words.push(std::mem::take(&mut cur));
                                cur.push_str(p);
                            }
                        } else {
                            cur.push_str(&value);
                        }
                        i += 3 + close;
                    }
                    _ => {
                        cur.push(c);
                        i += 1;
                    }
                }
            }
        }
    }
    match quote {
        Quote::Single => return Err("unterminated single quote, expected a closing '".into()),
        Quote::Double => return Err("unterminated double quote, expected a closing \"".into()),
        Quote::None => {}
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/x".into()),
            "LIST" => Some("a,b,c".into()),
            _ => None,
        }
    }

    fn words(s: &str) -> Vec<String> {
        lex_line(s, &env).expect("lexes")
    }

    #[test]
    fn splits_words_and_comments() {
        assert_eq!(words("  bind :80   # web"), vec!["bind", ":80"]);
        assert_eq!(words("# only a comment"), Vec::<String>::new());
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(words(r#"string "a b" 'c d'"#), vec!["string", "a b", "c d"]);
        assert_eq!(words(r"a\ b c\#d"), vec!["a b", "c#d"]);
        assert_eq!(words(r#""x\"y""#), vec!["x\"y"]);
        assert_eq!(words(r#"'a\b'"#), vec![r"a\b"]);
        assert_eq!(words(r#""""#), vec![""]);
        assert_eq!(words(r#"ab"cd"ef"#), vec!["abcdef"]);
        assert_eq!(words(r##""# not a comment""##), vec!["# not a comment"]);
    }

    #[test]
    fn env_expansion_only_in_double_quotes() {
        assert_eq!(words(r#""${HOME}/x""#), vec!["/home/x/x"]);
        assert_eq!(words(r#"'${HOME}'"#), vec!["${HOME}"]);
        assert_eq!(words(r#""${NOPE}""#), vec![""]);
        assert_eq!(words(r#""${NOPE-dflt}""#), vec!["dflt"]);
        assert_eq!(words(r#"x "${LIST[,]}" y"#), vec!["x", "a", "b", "c", "y"]);
    }

    #[test]
    fn errors_say_what_was_expected() {
        assert!(
            lex_line(r#"a "b"#, &env)
                .unwrap_err()
                .contains("expected a closing")
        );
        assert!(
            lex_line(r#""${X""#, &env)
                .unwrap_err()
                .contains("expected '}'")
        );
        assert!(lex_line("a \\", &env).unwrap_err().contains("backslash"));
    }
}
