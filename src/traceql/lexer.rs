//! Turns query text into tokens. Attribute names are lexed whole here because their
//! characters (`-`, `/`, `:`, `.`) would otherwise read as operators.

use super::ast::{Attribute, Scope};
use super::error::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    Comma,
    Pipe,
    And,
    Or,
    Not,
    Eq,
    Neq,
    Regex,
    /// `!~`: "not regex" inside a filter, "not sibling" between spansets.
    NotTilde,
    Gt,
    Gte,
    Lt,
    Lte,
    Desc,
    Ance,
    Tilde,
    NotChild,
    NotParent,
    NotDesc,
    NotAnce,
    UnionChild,
    UnionParent,
    UnionDesc,
    UnionAnce,
    UnionSibling,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Caret,
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    /// Nanoseconds.
    Duration(i64),
    Attr(Attribute),
    /// `span:name` and friends, checked against the known names by the parser.
    Intrinsic(String),
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(name) => format!("'{name}'"),
            Tok::Str(_) => "string".to_string(),
            Tok::Int(v) => format!("'{v}'"),
            Tok::Float(v) => format!("'{v:?}'"),
            Tok::Duration(_) => "duration".to_string(),
            Tok::Attr(attribute) => format!("'{attribute}'"),
            Tok::Intrinsic(name) => format!("'{name}'"),
            Tok::Eof => "end of query".to_string(),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Comma => ",",
            Tok::Pipe => "|",
            Tok::And => "&&",
            Tok::Or => "||",
            Tok::Not => "!",
            Tok::Eq => "=",
            Tok::Neq => "!=",
            Tok::Regex => "=~",
            Tok::NotTilde => "!~",
            Tok::Gt => ">",
            Tok::Gte => ">=",
            Tok::Lt => "<",
            Tok::Lte => "<=",
            Tok::Desc => ">>",
            Tok::Ance => "<<",
            Tok::Tilde => "~",
            Tok::NotChild => "!>",
            Tok::NotParent => "!<",
            Tok::NotDesc => "!>>",
            Tok::NotAnce => "!<<",
            Tok::UnionChild => "&>",
            Tok::UnionParent => "&<",
            Tok::UnionDesc => "&>>",
            Tok::UnionAnce => "&<<",
            Tok::UnionSibling => "&~",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Caret => "^",
            _ => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    /// Byte offset of the first character.
    pub(crate) pos: usize,
}

/// Characters that may appear in an unquoted attribute name. Everything but white space and
/// the characters that start an operator or delimit a group; notably `-`, `/`, `.` and `:`
/// are allowed, as in Tempo, so `span.http.user-agent` is one name.
pub(crate) fn is_attribute_char(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '{' | '}'
                | '('
                | ')'
                | '='
                | '~'
                | '!'
                | '<'
                | '>'
                | '&'
                | '|'
                | '^'
                | ','
                | '"'
                | '\\'
                | '`'
        )
}

/// Operators, longest first so `!>>` wins over `!>` and `!`.
const OPERATORS: [(&str, Tok); 35] = [
    ("!>>", Tok::NotDesc),
    ("!<<", Tok::NotAnce),
    ("&>>", Tok::UnionDesc),
    ("&<<", Tok::UnionAnce),
    ("&&", Tok::And),
    ("||", Tok::Or),
    ("!=", Tok::Neq),
    ("!~", Tok::NotTilde),
    ("!>", Tok::NotChild),
    ("!<", Tok::NotParent),
    ("=~", Tok::Regex),
    (">=", Tok::Gte),
    ("<=", Tok::Lte),
    (">>", Tok::Desc),
    ("<<", Tok::Ance),
    ("&>", Tok::UnionChild),
    ("&<", Tok::UnionParent),
    ("&~", Tok::UnionSibling),
    ("{", Tok::LBrace),
    ("}", Tok::RBrace),
    ("(", Tok::LParen),
    (")", Tok::RParen),
    (",", Tok::Comma),
    ("|", Tok::Pipe),
    ("!", Tok::Not),
    ("=", Tok::Eq),
    (">", Tok::Gt),
    ("<", Tok::Lt),
    ("~", Tok::Tilde),
    ("+", Tok::Plus),
    ("-", Tok::Minus),
    ("*", Tok::Star),
    ("/", Tok::Slash),
    ("%", Tok::Percent),
    ("^", Tok::Caret),
];

pub(crate) fn tokenize(query: &str) -> Result<Vec<Token>, ParseError> {
    let mut lexer = Lexer { query, pos: 0 };
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token()?;
        let done = token.tok == Tok::Eof;
        tokens.push(token);
        if done {
            return Ok(tokens);
        }
    }
}

struct Lexer<'a> {
    query: &'a str,
    pos: usize,
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        &self.query[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn error(&self, pos: usize, head: &str) -> ParseError {
        ParseError::new(self.query, pos, head, None)
    }

    fn next_token(&mut self) -> Result<Token, ParseError> {
        self.skip_white_space();
        let start = self.pos;
        let tok = self.scan()?;
        Ok(Token { tok, pos: start })
    }

    fn skip_white_space(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn scan(&mut self) -> Result<Tok, ParseError> {
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Ok(Tok::Eof);
        };
        if c == '"' {
            self.pos += 1;
            return self.string(start).map(Tok::Str);
        }
        if c == '`' {
            return self.raw_string(start).map(Tok::Str);
        }
        if c.is_ascii_digit()
            || (c == '.' && self.peek_second().is_some_and(|d| d.is_ascii_digit()))
        {
            return self.number(start);
        }
        if c == '.' {
            self.pos += 1;
            let name = self.attribute_name(start)?;
            return Ok(attribute(Scope::Unscoped, false, name));
        }
        if c.is_ascii_alphabetic() || c == '_' {
            return self.word(start);
        }
        for (text, tok) in &OPERATORS {
            if self.rest().starts_with(text) {
                self.pos += text.len();
                return Ok(tok.clone());
            }
        }
        Err(self.error(start, &format!("unexpected character '{c}'")))
    }

    /// A bare word: a keyword, an intrinsic (`span:duration`) or a scoped attribute.
    fn word(&mut self, start: usize) -> Result<Tok, ParseError> {
        let word = self.identifier();
        match self.peek() {
            Some('.') => {
                if let Some(scope) = scope_named(&word) {
                    self.pos += 1;
                    let name = self.attribute_name(start)?;
                    return Ok(attribute(scope, false, name));
                }
                if word == "parent" {
                    self.pos += 1;
                    return self.parent_attribute(start);
                }
                Ok(Tok::Ident(word))
            }
            Some(':') if is_intrinsic_scope(&word) => {
                self.pos += 1;
                let name = self.identifier();
                Ok(Tok::Intrinsic(format!("{word}:{name}")))
            }
            _ => Ok(Tok::Ident(word)),
        }
    }

    /// After `parent.`: `span.x`, `resource.x` or an unscoped name.
    fn parent_attribute(&mut self, start: usize) -> Result<Tok, ParseError> {
        for (prefix, scope) in [("span.", Scope::Span), ("resource.", Scope::Resource)] {
            if self.rest().starts_with(prefix) {
                self.pos += prefix.len();
                let name = self.attribute_name(start)?;
                return Ok(attribute(scope, true, name));
            }
        }
        let name = self.attribute_name(start)?;
        Ok(attribute(Scope::Unscoped, true, name))
    }

    fn identifier(&mut self) -> String {
        let begin = self.pos;
        while let Some(c) = self.peek() {
            if !(c.is_ascii_alphanumeric() || c == '_') {
                break;
            }
            self.pos += 1;
        }
        self.query[begin..self.pos].to_string()
    }

    /// The name after a scope's dot: unquoted runs and `"quoted"` parts, joined.
    fn attribute_name(&mut self, start: usize) -> Result<String, ParseError> {
        let mut name = String::new();
        loop {
            match self.peek() {
                Some('"') => {
                    let quote = self.pos;
                    self.pos += 1;
                    name.push_str(&self.quoted_name(quote)?);
                }
                Some(c) if is_attribute_char(c) => {
                    name.push(c);
                    self.pos += c.len_utf8();
                }
                _ => break,
            }
        }
        if name.is_empty() {
            return Err(self.error(start, "missing attribute name"));
        }
        Ok(name)
    }

    /// A quoted part of an attribute name: only `\"` and `\\` are escapes.
    fn quoted_name(&mut self, quote: usize) -> Result<String, ParseError> {
        let mut name = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error(quote, "unterminated quoted attribute name"));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(name),
                '\\' => match self.peek() {
                    Some(e @ ('"' | '\\')) => {
                        name.push(e);
                        self.pos += 1;
                    }
                    _ => {
                        let at = self.pos - 1;
                        return Err(self.error(
                            at,
                            "invalid escape in attribute name, only \\\" and \\\\ are allowed",
                        ));
                    }
                },
                c => name.push(c),
            }
        }
    }

    /// A `"..."` string after its opening quote, with Go's escapes.
    fn string(&mut self, start: usize) -> Result<String, ParseError> {
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error(start, "unterminated string"));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => out.push(self.escape()?),
                c => out.push(c),
            }
        }
    }

    fn escape(&mut self) -> Result<char, ParseError> {
        let at = self.pos - 1;
        let Some(c) = self.peek() else {
            return Err(self.error(at, "unterminated string"));
        };
        self.pos += c.len_utf8();
        let simple = match c {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            '"' => Some('"'),
            '\'' => Some('\''),
            _ => None,
        };
        if let Some(c) = simple {
            return Ok(c);
        }
        let digits = match c {
            'x' => 2,
            'u' => 4,
            'U' => 8,
            _ => return Err(self.error(at, &format!("invalid escape '\\{c}' in string"))),
        };
        let hex: String = self.rest().chars().take(digits).collect();
        let code = (hex.len() == digits)
            .then(|| u32::from_str_radix(&hex, 16).ok())
            .flatten()
            .and_then(char::from_u32);
        match code {
            Some(c) => {
                self.pos += digits;
                Ok(c)
            }
            None => Err(self.error(at, "invalid hex escape in string")),
        }
    }

    /// A `` `raw` `` string: no escapes, handy for regular expressions.
    fn raw_string(&mut self, start: usize) -> Result<String, ParseError> {
        let body = &self.query[start + 1..];
        match body.find('`') {
            Some(end) => {
                self.pos = start + 1 + end + 1;
                Ok(body[..end].to_string())
            }
            None => Err(self.error(start, "unterminated raw string")),
        }
    }

    /// An integer, a float (`1.5`, `.5`, `1e9`) or a duration (`1m30s`, `1.5ms`).
    fn number(&mut self, start: usize) -> Result<Tok, ParseError> {
        self.digits();
        let mut float = false;
        if self.peek() == Some('.') && self.peek_second().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.digits();
            float = true;
        }
        if self.has_exponent() {
            self.pos += 1;
            if matches!(self.peek(), Some('+' | '-')) {
                self.pos += 1;
            }
            self.digits();
            float = true;
        }
        if self.peek().is_some_and(|c| c.is_alphabetic()) {
            return self.duration(start);
        }
        let text = &self.query[start..self.pos];
        if float {
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Tok::Float(v)),
                _ => Err(self.error(start, &format!("float '{text}' out of range"))),
            }
        } else {
            text.parse::<i64>()
                .map(Tok::Int)
                .map_err(|_| self.error(start, &format!("integer '{text}' out of range")))
        }
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// `e` followed by digits (optionally signed) starts an exponent; `e` alone does not.
    fn has_exponent(&self) -> bool {
        let mut chars = self.rest().chars();
        if !matches!(chars.next(), Some('e' | 'E')) {
            return false;
        }
        match chars.next() {
            Some('+' | '-') => chars.next().is_some_and(|c| c.is_ascii_digit()),
            Some(c) => c.is_ascii_digit(),
            None => false,
        }
    }

    fn duration(&mut self, start: usize) -> Result<Tok, ParseError> {
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || c == '.' || c == 'µ' || c == 'μ')
        {
            self.pos += self.peek().map_or(1, char::len_utf8);
        }
        let text = &self.query[start..self.pos];
        parse_duration(text)
            .map(Tok::Duration)
            .ok_or_else(|| self.error(start, &format!("invalid duration '{text}'")))
    }
}

fn attribute(scope: Scope, parent: bool, name: String) -> Tok {
    Tok::Attr(Attribute {
        scope,
        parent,
        name,
    })
}

fn scope_named(word: &str) -> Option<Scope> {
    match word {
        "span" => Some(Scope::Span),
        "resource" => Some(Scope::Resource),
        "event" => Some(Scope::Event),
        "link" => Some(Scope::Link),
        "instrumentation" => Some(Scope::Instrumentation),
        _ => None,
    }
}

fn is_intrinsic_scope(word: &str) -> bool {
    matches!(
        word,
        "span" | "trace" | "event" | "link" | "instrumentation"
    )
}

/// Go's duration syntax without the sign: one or more `<decimal><unit>` parts, units
/// `ns us µs ms s m h`. Returns nanoseconds, or `None` when malformed or out of range.
pub(crate) fn parse_duration(text: &str) -> Option<i64> {
    let mut rest = text;
    let mut total: i128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        total += part_nanos(number, unit)?;
        if total > i64::MAX as i128 {
            return None;
        }
        rest = after;
    }
    i64::try_from(total).ok()
}

/// One `<decimal><unit>` part in nanoseconds, exact for whole and fractional values.
fn part_nanos(number: &str, unit: &str) -> Option<i128> {
    let scale: i128 = match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if whole.len() > 20 || fraction.contains('.') {
        return None;
    }
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(scale)?;
    // Digits past nanosecond precision are dropped, as Go does.
    let mut place = scale;
    for digit in fraction.chars() {
        place /= 10;
        nanos += i128::from(digit.to_digit(10)?) * place;
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go_syntax() {
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("10µs"), Some(10_000));
        assert_eq!(parse_duration("10μs"), Some(10_000));
        assert_eq!(parse_duration("2h"), Some(7_200_000_000_000));
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("1.2.3s"), None);
        assert_eq!(parse_duration("99999999999999h"), None);
    }

    #[test]
    fn attribute_names_keep_dashes_and_dots() {
        let tokens = tokenize("span.http.user-agent=1").unwrap();
        assert_eq!(
            tokens[0].tok,
            attribute(Scope::Span, false, "http.user-agent".to_string())
        );
        assert_eq!(tokens[1].tok, Tok::Eq);
    }

    #[test]
    fn quoted_attribute_parts_join() {
        let tokens = tokenize(r#"span.a."b \"c\\""#).unwrap();
        assert_eq!(
            tokens[0].tok,
            attribute(Scope::Span, false, r#"a.b "c\"#.to_string())
        );
    }
}
