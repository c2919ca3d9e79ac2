//! keepalived.conf's lexical rules: words separated by blanks, `{` and `}`
//! as tokens of their own, `#` or `!` starting a comment, double quotes
//! grouping blanks into one word, and a backslash before the line end
//! continuing the line.

use super::ImportError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    Word(String),
    Open,
    Close,
    /// Statements end at the line end, so the parser needs to see it.
    End,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: usize,
}

pub(crate) fn lex(text: &str, file: &str) -> Result<Vec<Token>, ImportError> {
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    let mut word: Option<String> = None;
    let flush = |word: &mut Option<String>, tokens: &mut Vec<Token>, line: usize| {
        if let Some(w) = word.take() {
            tokens.push(Token {
                tok: Tok::Word(w),
                line,
            });
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                flush(&mut word, &mut tokens, line);
                tokens.push(Token {
                    tok: Tok::End,
                    line,
                });
                line += 1;
            }
            '\\' if matches!(chars.peek(), Some('\n' | '\r')) => {
                if chars.next() == Some('\r') && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                flush(&mut word, &mut tokens, line);
                line += 1;
            }
            c if c.is_whitespace() => flush(&mut word, &mut tokens, line),
            '{' | '}' => {
                flush(&mut word, &mut tokens, line);
                let tok = if c == '{' { Tok::Open } else { Tok::Close };
                tokens.push(Token { tok, line });
            }
            // Only at the start of a word, so a password like "pa!ss" survives.
            '#' | '!' if word.is_none() => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') if matches!(chars.peek(), Some('"' | '\\')) => {
                            w.extend(chars.next());
                        }
                        Some('\n') | None => {
                            return Err(ImportError::Syntax {
                                file: file.to_owned(),
                                line,
                                message: "unterminated quoted string".to_owned(),
                            });
                        }
                        Some(c) => w.push(c),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    flush(&mut word, &mut tokens, line);
    tokens.push(Token {
        tok: Tok::End,
        line,
    });
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(String, usize)> {
        lex(text, "t.conf")
            .expect("lexes")
            .into_iter()
            .map(|t| {
                let s = match t.tok {
                    Tok::Word(w) => w,
                    Tok::Open => "{".to_owned(),
                    Tok::Close => "}".to_owned(),
                    Tok::End => ";".to_owned(),
                };
                (s, t.line)
            })
            .collect()
    }

    fn flat(text: &str) -> String {
        words(text)
            .into_iter()
            .map(|(w, _)| w)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn braces_split_words_and_comments_end_lines() {
        assert_eq!(
            flat("vrrp_instance VI_1{ ! a comment\n  state MASTER # another\n}"),
            "vrrp_instance VI_1 { ; state MASTER ; } ;"
        );
    }

    #[test]
    fn comment_marks_inside_a_word_are_kept() {
        assert_eq!(flat("auth_pass pa!ss#1"), "auth_pass pa!ss#1 ;");
    }

    #[test]
    fn quotes_group_blanks_and_braces() {
        assert_eq!(
            flat(r#"script "/bin/check {a} \"b\" # c""#),
            r#"script /bin/check {a} "b" # c ;"#
        );
    }

    #[test]
    fn backslash_continues_the_line() {
        let w = words("misc_path /bin/check \\\n  --fast\nx");
        assert_eq!(
            w,
            vec![
                ("misc_path".to_owned(), 1),
                ("/bin/check".to_owned(), 1),
                ("--fast".to_owned(), 2),
                (";".to_owned(), 2),
                ("x".to_owned(), 3),
                (";".to_owned(), 3),
            ]
        );
    }

    #[test]
    fn unterminated_quote_is_an_error_with_its_line() {
        let e = lex("a\nscript \"/bin/x\nb", "k.conf").expect_err("must fail");
        assert_eq!(e.to_string(), "k.conf:2: unterminated quoted string");
    }
}
