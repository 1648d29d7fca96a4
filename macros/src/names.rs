//! Names and types as text, for messages and for the registry.

use quote::ToTokens;

/// A type as the user wrote it: `Vec<u8>`, not `Vec < u8 >`.
pub(crate) fn tokens_text(tokens: &impl ToTokens) -> String {
    let text = tokens.to_token_stream().to_string();
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let prev = if i > 0 { chars[i - 1] } else { ' ' };
            let next = chars.get(i + 1).copied().unwrap_or(' ');
            let tight = matches!(prev, '<' | '(' | '[' | '&' | ':')
                || matches!(next, '<' | '>' | ',' | ')' | ']')
                || (next == ':' && prev != ',')
                || (prev == '>' && next == '>');
            if tight {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// An identifier as text, without `r#`.
pub(crate) fn ident_text(ident: &syn::Ident) -> String {
    let text = ident.to_string();
    match text.strip_prefix("r#") {
        Some(raw) => raw.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_read_as_written() {
        let ty: syn::Type = syn::parse_quote!(Result<Vec<Json<(u8, String)>>, ::millstream::Error>);
        assert_eq!(tokens_text(&ty), "Result<Vec<Json<(u8, String)>>, ::millstream::Error>");
        let ty: syn::Type = syn::parse_quote!(State<Prices>);
        assert_eq!(tokens_text(&ty), "State<Prices>");
        let ident: syn::Ident = syn::parse_quote!(r#type);
        assert_eq!(ident_text(&ident), "type");
    }
}
