//! keepalived's block grammar, `keyword args... [{ statements }]`, into a
//! generic tree. Nothing here knows what a keyword means.
//!
//! A statement ends at the line end, at `{` (its block follows) or at `}`.
//! A `{` alone on the next line opens the previous statement's block, a
//! layout some hand-written configs use. `include` is spliced in place,
//! wherever it stands, because keepalived includes are textual.

use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::vec::IntoIter;

use super::lexer::{Tok, Token, lex};
use super::{ImportError, Includes, Warning};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub keyword: String,
    pub args: Vec<String>,
    pub children: Vec<Node>,
    /// Whether `{ }` followed, even empty: `virtual_ipaddress {}` and a bare
    /// `virtual_ipaddress` mean different things.
    pub block: bool,
    pub file: Rc<str>,
    pub line: usize,
    /// Position in the whole spliced input, to report warnings in the order
    /// the reader meets them.
    pub pos: usize,
}

impl Node {
    pub fn warning(&self, message: impl Into<String>) -> (usize, Warning) {
        (
            self.pos,
            Warning {
                file: self.file.to_string(),
                line: self.line,
                message: message.into(),
            },
        )
    }
}

pub(crate) struct Parsed {
    pub nodes: Vec<Node>,
    pub warnings: Vec<(usize, Warning)>,
}

pub(crate) fn parse(
    text: &str,
    file_name: &str,
    includes: &dyn Includes,
) -> Result<Parsed, ImportError> {
    let mut parser = Parser {
        includes,
        reading: Vec::new(),
        warnings: Vec::new(),
        next_pos: 0,
    };
    let identity = includes.identity(Path::new(file_name));
    let nodes = parser.file(text, file_name, identity)?;
    Ok(Parsed {
        nodes,
        warnings: parser.warnings,
    })
}

type Tokens = Peekable<IntoIter<Token>>;

struct Parser<'a> {
    includes: &'a dyn Includes,
    /// Identities of the files being read, outermost first.
    reading: Vec<PathBuf>,
    warnings: Vec<(usize, Warning)>,
    next_pos: usize,
}

impl Parser<'_> {
    fn file(
        &mut self,
        text: &str,
        name: &str,
        identity: PathBuf,
    ) -> Result<Vec<Node>, ImportError> {
        let file: Rc<str> = Rc::from(name);
        let mut tokens = lex(text, name)?.into_iter().peekable();
        self.reading.push(identity);
        let nodes = self.block(&mut tokens, &file, None);
        self.reading.pop();
        nodes
    }

    fn error(file: &Rc<str>, line: usize, message: &str) -> ImportError {
        ImportError::Syntax {
            file: file.to_string(),
            line,
            message: message.to_owned(),
        }
    }

    /// Statements up to the `}` closing the block opened on line `open`, or
    /// to the end of the file when `open` is `None`.
    fn block(
        &mut self,
        tokens: &mut Tokens,
        file: &Rc<str>,
        open: Option<usize>,
    ) -> Result<Vec<Node>, ImportError> {
        let mut nodes: Vec<Node> = Vec::new();
        while let Some(token) = tokens.next() {
            match token.tok {
                Tok::End => {}
                Tok::Close if open.is_some() => return Ok(nodes),
                Tok::Close => return Err(Self::error(file, token.line, "'}' without a block")),
                Tok::Open => match nodes.last_mut() {
                    Some(last) if !last.block => {
                        last.block = true;
                        last.children = self.block(tokens, file, Some(token.line))?;
                    }
                    _ => return Err(Self::error(file, token.line, "'{' without a keyword")),
                },
                Tok::Word(keyword) => {
                    let node = self.statement(tokens, file, keyword, token.line)?;
                    if node.keyword == "include" && !node.block {
                        nodes.extend(self.include(&node)?);
                    } else {
                        nodes.push(node);
                    }
                }
            }
        }
        match open {
            Some(line) => Err(Self::error(file, line, "'{' is never closed")),
            None => Ok(nodes),
        }
    }

    fn statement(
        &mut self,
        tokens: &mut Tokens,
        file: &Rc<str>,
        keyword: String,
        line: usize,
    ) -> Result<Node, ImportError> {
        let mut node = Node {
            keyword,
            args: Vec::new(),
            children: Vec::new(),
            block: false,
            file: Rc::clone(file),
            line,
            pos: self.next_pos,
        };
        self.next_pos += 1;
        while let Some(token) = tokens.next_if(|t| matches!(t.tok, Tok::Word(_) | Tok::Open)) {
            match token.tok {
                Tok::Word(w) => node.args.push(w),
                _ => {
                    node.block = true;
                    node.children = self.block(tokens, file, Some(token.line))?;
                    break;
                }
            }
        }
        Ok(node)
    }

    fn include(&mut self, node: &Node) -> Result<Vec<Node>, ImportError> {
        let Some(pattern) = node.args.first() else {
            self.warnings
                .push(node.warning("include without a file name; ignored"));
            return Ok(Vec::new());
        };
        if node.args.len() > 1 {
            self.warnings.push(node.warning(format!(
                "include takes one pattern; ignored the rest: {}",
                node.args[1..].join(" ")
            )));
        }
        let dir = Path::new(&*node.file).parent().unwrap_or(Path::new(""));
        let found = self.includes.expand(&dir.join(pattern));
        if found.is_empty() {
            self.warnings
                .push(node.warning(format!("include {pattern}: no such file; nothing included")));
        }
        let mut nodes = Vec::new();
        for path in found {
            let included = path.display().to_string();
            let identity = self.includes.identity(&path);
            if self.reading.contains(&identity) {
                return Err(ImportError::IncludeCycle {
                    file: node.file.to_string(),
                    line: node.line,
                    included,
                });
            }
            let text = self
                .includes
                .read(&path)
                .map_err(|source| ImportError::Include {
                    file: node.file.to_string(),
                    line: node.line,
                    included: included.clone(),
                    source,
                })?;
            nodes.extend(self.file(&text, &included, identity)?);
        }
        Ok(nodes)
    }
}
