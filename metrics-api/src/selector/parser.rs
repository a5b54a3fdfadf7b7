//! The lexer and parser of `labels.Parse`, translated line by line so that every string is
//! accepted or rejected exactly as Go does: tokens, the grammar, and `labels.NewRequirement`'s
//! checks.

use super::{
    Operator, Requirement, SelectorError,
    names::{label_value_problem, validate_key},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
    Error,
}

/// `string2token`: the literal tokens.
fn literal_token(literal: &[u8]) -> Option<Token> {
    Some(match literal {
        b")" => Token::ClosedPar,
        b"," => Token::Comma,
        b"!" => Token::DoesNotExist,
        b"==" => Token::DoubleEquals,
        b"=" => Token::Equals,
        b">" => Token::GreaterThan,
        b"in" => Token::In,
        b"<" => Token::LessThan,
        b"!=" => Token::NotEquals,
        b"notin" => Token::NotIn,
        b"(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(ch: u8) -> bool {
    matches!(ch, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special_symbol(ch: u8) -> bool {
    matches!(ch, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// The byte lexer of `labels.Lexer`, including its quirk that a NUL byte reads as the end.
struct Lexer<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Lexer<'_> {
    fn read(&mut self) -> u8 {
        match self.input.get(self.pos) {
            Some(&ch) => {
                self.pos += 1;
                ch
            }
            None => 0,
        }
    }

    fn unread(&mut self) {
        self.pos -= 1;
    }

    fn scan_id_or_keyword(&mut self) -> (Token, String) {
        let mut buffer = Vec::new();
        loop {
            let ch = self.read();
            if ch == 0 {
                break;
            }
            if is_special_symbol(ch) || is_whitespace(ch) {
                self.unread();
                break;
            }
            buffer.push(ch);
        }
        let token = literal_token(&buffer).unwrap_or(Token::Identifier);
        (token, String::from_utf8_lossy(&buffer).into_owned())
    }

    /// The longest operator made of special symbols (`!=` rather than `!`).
    fn scan_special_symbol(&mut self) -> (Token, String) {
        let mut last: Option<(Token, usize)> = None;
        let mut buffer = Vec::new();
        loop {
            let ch = self.read();
            if ch == 0 {
                break;
            }
            if !is_special_symbol(ch) {
                self.unread();
                break;
            }
            buffer.push(ch);
            if let Some(token) = literal_token(&buffer) {
                last = Some((token, buffer.len()));
            } else if last.is_some() {
                self.unread();
                break;
            }
        }
        match last {
            Some((token, len)) => (token, String::from_utf8_lossy(&buffer[..len]).into_owned()),
            None => (
                Token::Error,
                format!(
                    "error expected: keyword found '{}'",
                    String::from_utf8_lossy(&buffer)
                ),
            ),
        }
    }

    fn lex(&mut self) -> (Token, String) {
        let mut ch = self.read();
        while is_whitespace(ch) {
            ch = self.read();
        }
        if ch == 0 {
            return (Token::End, String::new());
        }
        self.unread();
        if is_special_symbol(ch) {
            self.scan_special_symbol()
        } else {
            self.scan_id_or_keyword()
        }
    }
}

/// Where the parser is: `in`/`notin` are operators after a key but identifiers among values.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

pub(super) struct Parser {
    items: Vec<(Token, String)>,
    position: usize,
}

impl Parser {
    pub(super) fn new(selector: &str) -> Self {
        let mut lexer = Lexer {
            input: selector.as_bytes(),
            pos: 0,
        };
        let mut items = Vec::new();
        loop {
            let item = lexer.lex();
            let end = item.0 == Token::End;
            items.push(item);
            if end {
                break;
            }
        }
        Self { items, position: 0 }
    }

    fn item(&self, index: usize, context: Context) -> (Token, String) {
        // The lexer always ends with `End` and the parser never consumes past it.
        let (token, literal) = self
            .items
            .get(index)
            .cloned()
            .unwrap_or((Token::End, String::new()));
        match (context, token) {
            (Context::Values, Token::In | Token::NotIn) => (Token::Identifier, literal),
            _ => (token, literal),
        }
    }

    fn lookahead(&self, context: Context) -> (Token, String) {
        self.item(self.position, context)
    }

    fn consume(&mut self, context: Context) -> (Token, String) {
        let item = self.item(self.position, context);
        self.position = (self.position + 1).min(self.items.len());
        item
    }

    pub(super) fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let (token, literal) = self.lookahead(Context::Values);
            match token {
                Token::Identifier | Token::DoesNotExist => {
                    let requirement = self
                        .parse_requirement()
                        .map_err(|e| SelectorError::Requirement(Box::new(e)))?;
                    requirements.push(requirement);
                    let (token, literal) = self.consume(Context::Values);
                    match token {
                        Token::End => return Ok(requirements),
                        Token::Comma => {
                            let (next, literal) = self.lookahead(Context::Values);
                            if next != Token::Identifier && next != Token::DoesNotExist {
                                return Err(SelectorError::Unexpected {
                                    found: literal,
                                    expected: "identifier after ','",
                                });
                            }
                        }
                        _ => {
                            return Err(SelectorError::Unexpected {
                                found: literal,
                                expected: "',' or 'end of string'",
                            });
                        }
                    }
                }
                Token::End => return Ok(requirements),
                _ => {
                    return Err(SelectorError::Unexpected {
                        found: literal,
                        expected: "!, identifier, or 'end of string'",
                    });
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, operator) = self.parse_key_and_infer_operator()?;
        if let Some(operator @ (Operator::Exists | Operator::DoesNotExist)) = operator {
            return new_requirement(key, operator, Vec::new());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        new_requirement(key, operator, values)
    }

    /// The key, and `exists`/`!` when nothing but `,` or the end follows it.
    fn parse_key_and_infer_operator(
        &mut self,
    ) -> Result<(String, Option<Operator>), SelectorError> {
        let mut operator = None;
        let (mut token, mut literal) = self.consume(Context::Values);
        if token == Token::DoesNotExist {
            operator = Some(Operator::DoesNotExist);
            (token, literal) = self.consume(Context::Values);
        }
        if token != Token::Identifier {
            return Err(SelectorError::Unexpected {
                found: literal,
                expected: "identifier",
            });
        }
        validate_key(&literal)?;
        let (next, _) = self.lookahead(Context::Values);
        if matches!(next, Token::End | Token::Comma) && operator.is_none() {
            operator = Some(Operator::Exists);
        }
        Ok((literal, operator))
    }

    fn parse_operator(&mut self) -> Result<Operator, SelectorError> {
        let (token, literal) = self.consume(Context::KeyAndOperator);
        Ok(match token {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            _ => {
                return Err(SelectorError::Unexpected {
                    found: literal,
                    expected: "in, notin, =, ==, !=, gt, lt",
                });
            }
        })
    }

    /// `(a,b)`; `()` is the set holding only the empty value, and empty list items are empty
    /// values (`(a,,b)`), as in Go.
    fn parse_values(&mut self) -> Result<Vec<String>, SelectorError> {
        let (token, literal) = self.consume(Context::Values);
        if token != Token::OpenPar {
            return Err(SelectorError::NoOpenParenthesis { found: literal });
        }
        let (token, literal) = self.lookahead(Context::Values);
        match token {
            Token::Identifier | Token::Comma => {
                let values = self.parse_identifiers_list()?;
                let (token, _) = self.consume(Context::Values);
                if token != Token::ClosedPar {
                    return Err(SelectorError::Unexpected {
                        found: literal,
                        expected: "')'",
                    });
                }
                Ok(values)
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(vec![String::new()])
            }
            _ => Err(SelectorError::Unexpected {
                found: literal,
                expected: "',', ')' or identifier",
            }),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, SelectorError> {
        let mut values = Vec::new();
        loop {
            let (token, literal) = self.consume(Context::Values);
            match token {
                Token::Identifier => {
                    values.push(literal);
                    let (next, literal) = self.lookahead(Context::Values);
                    match next {
                        Token::Comma => {}
                        Token::ClosedPar => return Ok(values),
                        _ => {
                            return Err(SelectorError::Unexpected {
                                found: literal,
                                expected: "',' or ')'",
                            });
                        }
                    }
                }
                Token::Comma => {
                    if values.is_empty() {
                        values.push(String::new());
                    }
                    let (next, _) = self.lookahead(Context::Values);
                    if next == Token::ClosedPar {
                        values.push(String::new());
                        return Ok(values);
                    }
                    if next == Token::Comma {
                        values.push(String::new());
                    }
                }
                _ => {
                    return Err(SelectorError::Unexpected {
                        found: literal,
                        expected: "',', or identifier",
                    });
                }
            }
        }
    }

    /// The one value of `=`, `==`, `!=`, `>`, `<`; nothing before `,` or the end is `""`.
    fn parse_exact_value(&mut self) -> Result<Vec<String>, SelectorError> {
        let (token, _) = self.lookahead(Context::Values);
        if matches!(token, Token::End | Token::Comma) {
            return Ok(vec![String::new()]);
        }
        let (token, literal) = self.consume(Context::Values);
        if token == Token::Identifier {
            Ok(vec![literal])
        } else {
            Err(SelectorError::Unexpected {
                found: literal,
                expected: "identifier",
            })
        }
    }
}

/// `labels.NewRequirement`: values as a sorted set, then every check, all problems reported.
fn new_requirement(
    key: String,
    operator: Operator,
    mut values: Vec<String>,
) -> Result<Requirement, SelectorError> {
    values.sort();
    values.dedup();
    let mut problems = Vec::new();
    if let Err(problem) = validate_key(&key) {
        problems.push(problem);
    }
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => {
            problems.push(SelectorError::EmptyValueSet { key: key.clone() });
        }
        Operator::GreaterThan | Operator::LessThan => {
            for value in &values {
                if value.parse::<i64>().is_err() {
                    problems.push(SelectorError::NotAnInteger {
                        key: key.clone(),
                        value: value.clone(),
                    });
                }
            }
        }
        _ => {}
    }
    for value in &values {
        if let Some(problem) = label_value_problem(value) {
            problems.push(SelectorError::InvalidValue {
                key: key.clone(),
                value: value.clone(),
                problem,
            });
        }
    }
    match problems.len() {
        0 => Ok(Requirement {
            key,
            operator,
            values,
        }),
        1 => Err(problems.remove(0)),
        _ => Err(SelectorError::Several(problems)),
    }
}
