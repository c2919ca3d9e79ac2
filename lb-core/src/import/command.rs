//! keepalived script strings (`script`, `misc_path`, `notify_*`) to argv.
//!
//! keepalived 2.x splits the string on blanks, honouring single and double
//! quotes and backslashes, and runs it without a shell; 1.x ran it with
//! `/bin/sh -c`. lb runs argv without a shell, so a string that only works
//! through a shell (pipes, redirections, `$VAR`...) is wrapped in
//! `/bin/sh -c` rather than silently split into nonsense.

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Argv {
    pub args: Vec<String>,
    pub through_shell: bool,
}

pub(crate) fn split(script: &str) -> Result<Argv, &'static str> {
    let mut args = Vec::new();
    let mut word: Option<String> = None;
    let mut shell = false;
    let mut chars = script.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => args.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated single quote"),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.extend(chars.next()),
                        Some('$' | '`') => {
                            shell = true;
                            w.push(c);
                        }
                        Some(c) => w.push(c),
                        None => return Err("unterminated double quote"),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '|' | '&' | ';' | '<' | '>' | '$' | '`' | '(' | ')' | '*' | '?' | '~' => {
                shell = true;
                word.get_or_insert_with(String::new).push(c);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    args.extend(word);
    if args.is_empty() {
        return Err("empty command");
    }
    if shell {
        args = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            script.trim().to_owned(),
        ];
    }
    Ok(Argv {
        args,
        through_shell: shell,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        let a = split(s).expect("splits");
        assert!(!a.through_shell, "{s} needs no shell");
        a.args
    }

    #[test]
    fn splits_on_blanks_and_honours_quotes() {
        assert_eq!(argv("/usr/bin/check  80"), ["/usr/bin/check", "80"]);
        assert_eq!(
            argv(r#"/bin/sh -c 'killall -0 haproxy'"#),
            ["/bin/sh", "-c", "killall -0 haproxy"]
        );
        assert_eq!(argv(r#"/bin/n "a b" c\ d"#), ["/bin/n", "a b", "c d"]);
    }

    #[test]
    fn shell_syntax_runs_through_sh() {
        let a = split("/bin/pidof haproxy || exit 1").expect("splits");
        assert!(a.through_shell);
        assert_eq!(a.args, ["/bin/sh", "-c", "/bin/pidof haproxy || exit 1"]);
        assert!(split("/bin/x '$HOME'").is_ok_and(|a| !a.through_shell));
    }

    #[test]
    fn rejects_broken_strings() {
        assert_eq!(split("  "), Err("empty command"));
        assert_eq!(split("/bin/x 'a"), Err("unterminated single quote"));
    }
}
