//! Whether the fn under an attribute is an associated fn: one written directly inside an `impl`
//! or `trait` block.
//!
//! An attribute macro sees only its item, and `async fn bill(order: Order)` reads the same in a
//! module and in an `impl`. But the registration a handler expands to names the fn by its bare
//! name inside a `const _: () = { .. };`, and in an `impl` both fail: rustc reports "`const` items
//! in this context need a name" and "cannot find value `bill`", about code the user never wrote.
//! The generated code cannot tell the two places apart either (whatever it names resolves in one
//! and not in the other), so the macro looks at the place itself: the source file and position of
//! the fn's name (`Span::local_file`, `line` and `column`, stable since Rust 1.88), read with a
//! small lexer that tracks which kind of item each open brace belongs to.
//!
//! This is a best effort that can only help: when the position cannot be read (no local file, a
//! name that a macro produced, a file that does not show the fn where the span says), the answer
//! is "not known" and the expansion goes ahead as it always did.

use std::path::PathBuf;

use proc_macro2::Span;

use crate::errors::Errors;

/// The block an associated fn is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Container {
    /// `impl Type { .. }` or `impl Trait for Type { .. }`.
    Impl,
    /// `trait Name { .. }`.
    Trait,
}

/// Records an error on the attribute `#[millstream::<attribute>]` when the fn is an associated fn
/// (one with a `self` parameter is reported for that instead).
pub(crate) fn require_free_fn(sig: &syn::Signature, attribute: &str, errors: &mut Errors) {
    if sig.receiver().is_some() {
        return;
    }
    let place = match container_of(&sig.ident) {
        Some(Container::Impl) => "an `impl` block",
        Some(Container::Trait) => "a `trait`",
        None => return,
    };
    errors.on(
        Span::call_site(),
        format_args!(
            "`#[millstream::{attribute}]` goes on a free fn, and `{name}` is in {place}: move `{name}` out to \
             the module, or keep it here and put the attribute on a free fn that calls it",
            name = sig.ident
        ),
    );
}

/// The `impl` or `trait` block the fn named `ident` is written directly in, if the source shows
/// one; `None` when it is a free fn, or when the source cannot be read.
pub(crate) fn container_of(ident: &syn::Ident) -> Option<Container> {
    if !proc_macro::is_available() {
        return None;
    }
    let span = ident.span().unwrap();
    let file: PathBuf = span.local_file()?;
    let source = std::fs::read_to_string(file).ok()?;
    let offset = offset_of(&source, span.line(), span.column())?;
    let name = crate::names::ident_text(ident);
    if !source[offset..].starts_with(&name) && !source[offset..].starts_with(&format!("r#{name}")) {
        return None;
    }
    if !source[..offset].trim_end().ends_with("fn") {
        return None;
    }
    container_at(&source, offset)
}

/// The byte offset of a 1-based line and 1-based column (counted in characters).
fn offset_of(source: &str, line: usize, column: usize) -> Option<usize> {
    let line_start =
        if line <= 1 { 0 } else { source.match_indices('\n').nth(line - 2).map(|(index, _)| index + 1)? };
    let rest = &source[line_start..];
    rest.char_indices().nth(column.checked_sub(1)?).map(|(index, _)| line_start + index)
}

/// What an item keyword opens, for the braces that follow it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opener {
    Impl,
    Trait,
    Other,
}

/// An open delimiter.
enum Open {
    /// `{`, owned by an `impl`, a `trait` or anything else, with the first item keyword seen at
    /// this level since its last `;`, `{` or `}`.
    Brace { owner: Opener, head: Option<Opener> },
    /// `(` or `[`: keywords inside do not start items.
    Other,
}

/// The container of the item that starts at `target`: the owner of the innermost open brace, if
/// that brace is an `impl` or `trait` body.
fn container_at(source: &str, target: usize) -> Option<Container> {
    let bytes = source.as_bytes();
    // The file's top level reads like the inside of a block that no item owns.
    let mut stack = vec![Open::Brace { owner: Opener::Other, head: None }];
    let mut i = 0;
    while i < target && i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        match c {
            b'/' if next == Some(b'/') => i = skip_line(bytes, i),
            b'/' if next == Some(b'*') => i = skip_block_comment(bytes, i),
            b'"' => i = skip_string(bytes, i + 1),
            b'\'' => i = skip_quote(bytes, i),
            b'{' => {
                let owner = match stack.last() {
                    Some(Open::Brace { head, .. }) => head.unwrap_or(Opener::Other),
                    _ => Opener::Other,
                };
                stack.push(Open::Brace { owner, head: None });
                i += 1;
            }
            b'(' | b'[' => {
                stack.push(Open::Other);
                i += 1;
            }
            b'}' => {
                if stack.len() > 1 {
                    stack.pop();
                }
                reset_head(&mut stack);
                i += 1;
            }
            b')' | b']' => {
                if stack.len() > 1 {
                    stack.pop();
                }
                i += 1;
            }
            b';' => {
                reset_head(&mut stack);
                i += 1;
            }
            c if c == b'_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < bytes.len() && (bytes[i] == b'_' || bytes[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let word = &source[start..i];
                // Raw and byte strings: `r"..."`, `r#"..."#`, `b"..."`, `br#"..."#`, `c"..."`.
                if matches!(word, "r" | "br" | "cr") && matches!(bytes.get(i), Some(b'"' | b'#')) {
                    i = skip_raw_string(bytes, i);
                    continue;
                }
                if matches!(word, "b" | "c") && bytes.get(i) == Some(&b'"') {
                    i = skip_string(bytes, i + 1);
                    continue;
                }
                if word == "b" && bytes.get(i) == Some(&b'\'') {
                    i = skip_quote(bytes, i);
                    continue;
                }
                // `r#impl` is a name, not the keyword.
                if word == "r" && bytes.get(i) == Some(&b'#') {
                    i += 1;
                    while i < bytes.len() && (bytes[i] == b'_' || bytes[i].is_ascii_alphanumeric()) {
                        i += 1;
                    }
                    continue;
                }
                note_keyword(&mut stack, word);
            }
            c if c.is_ascii_digit() => {
                while i < bytes.len() && (bytes[i] == b'_' || bytes[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    match stack.last() {
        Some(Open::Brace { owner: Opener::Impl, .. }) => Some(Container::Impl),
        Some(Open::Brace { owner: Opener::Trait, .. }) => Some(Container::Trait),
        _ => None,
    }
}

/// Records an item keyword for the innermost brace level: the first one since the level's last
/// `;`, `{` or `}` says what a `{` at that level opens. `unsafe`, `async`, `pub` and the like
/// are not item keywords: `unsafe impl` opens an impl.
fn note_keyword(stack: &mut [Open], word: &str) {
    let opener = match word {
        "impl" => Opener::Impl,
        "trait" => Opener::Trait,
        "fn" | "mod" | "struct" | "enum" | "union" | "const" | "static" | "let" | "type" | "use"
        | "extern" | "macro_rules" => Opener::Other,
        _ => return,
    };
    if let Some(Open::Brace { head, .. }) = stack.last_mut() {
        head.get_or_insert(opener);
    }
}

/// A `;` or a `}` ends the item being read at the innermost brace level.
fn reset_head(stack: &mut [Open]) {
    if let Some(Open::Brace { head, .. }) = stack.last_mut() {
        *head = None;
    }
}

fn skip_line(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i] != b'\n' {
        i += 1;
    }
    i
}

/// Past a `/* .. */` comment, nested ones included.
fn skip_block_comment(bytes: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Past the closing `"` of a string whose body starts at `i`.
fn skip_string(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Past a raw string: `i` is at the first `#` or at the opening `"`.
fn skip_raw_string(bytes: &[u8], mut i: usize) -> usize {
    let mut hashes = 0;
    while bytes.get(i) == Some(&b'#') {
        hashes += 1;
        i += 1;
    }
    if bytes.get(i) != Some(&b'"') {
        return i;
    }
    i += 1;
    while i < bytes.len() {
        if bytes[i] == b'"' && bytes[i + 1..].iter().take(hashes).filter(|&&b| b == b'#').count() == hashes {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// Past a character literal (`'x'`, `'\n'`, `'é'`) or a lifetime (`'a`): `i` is at the `'`.
fn skip_quote(bytes: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    if bytes.get(j) == Some(&b'\\') {
        j += 2;
        while j < bytes.len() && bytes[j] != b'\'' {
            j += 1;
        }
        return j + 1;
    }
    // One character, possibly several bytes long, then `'`: a character literal.
    let width = match bytes.get(j) {
        Some(&b) if b < 0x80 => 1,
        Some(&b) if b >= 0xF0 => 4,
        Some(&b) if b >= 0xE0 => 3,
        Some(_) => 2,
        None => return j,
    };
    if bytes.get(j + width) == Some(&b'\'') {
        return j + width + 1;
    }
    // A lifetime: the name is read as a word, which is never a keyword that opens an item.
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(source: &str) -> Option<Container> {
        let target = source.find("HERE").expect("marker");
        container_at(source, target)
    }

    #[test]
    fn free_fns_have_no_container() {
        assert_eq!(container("async fn HERE() {}"), None);
        assert_eq!(container("mod m { use x::y; async fn HERE() {} }"), None);
        assert_eq!(container("impl A { fn f() {} }\nasync fn HERE() {}"), None);
        assert_eq!(container("impl A { fn f() { async fn HERE() {} } }"), None);
        assert_eq!(container("fn f() -> impl Sized { async fn HERE() {} }"), None);
        assert_eq!(container("struct S { a: u8 }\nasync fn HERE() {}"), None);
    }

    #[test]
    fn associated_fns_are_found() {
        assert_eq!(container("impl Billing {\n    async fn HERE() {}\n}"), Some(Container::Impl));
        assert_eq!(
            container("unsafe impl<T: Fn() -> u8> X for Y<T> where T: Copy { fn HERE() {} }"),
            Some(Container::Impl)
        );
        assert_eq!(container("pub(crate) trait T { fn a(); async fn HERE() {} }"), Some(Container::Trait));
        assert_eq!(
            container("mod m { impl A { fn a() -> impl Sized {} #[x(impl)] async fn HERE() {} } }"),
            Some(Container::Impl)
        );
    }

    #[test]
    fn braces_in_comments_strings_and_chars_do_not_count() {
        let source = "impl A {\n    // }\n    /* } /* } */ */\n    const S: &str = \"}\";\n    const R: &str = r#\"}\"#;\n    const C: char = '}';\n    fn f<'a>(x: &'a u8) {}\n    async fn HERE() {}\n}";
        assert_eq!(container(source), Some(Container::Impl));
    }

    #[test]
    fn offsets_count_characters() {
        let source = "é\nab";
        assert_eq!(offset_of(source, 2, 2), Some(source.find('b').unwrap()));
        assert_eq!(offset_of(source, 1, 1), Some(0));
        assert_eq!(offset_of(source, 3, 1), None);
    }
}
