use parlor_media::{Disposition, NAME_BYTES_MAX, NameError, content_disposition, file_name};

#[test]
fn names_are_cleaned() {
    for (raw, clean) in [
        ("report.pdf", "report.pdf"),
        ("  report final.pdf  ", "report final.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/var/tmp/x.txt", "x.txt"),
        (r"C:\Users\ann\Desktop\plan.docx", "plan.docx"),
        (r"mixed/..\both\ways.png", "ways.png"),
        (".bashrc", "bashrc"),
        ("... .hidden", "hidden"),
        ("tab\there\nnew\r\0line.txt", "tabherenewline.txt"),
        ("bell\u{7}del\u{7f}c1\u{85}.txt", "belldelc1.txt"),
        // U+202E makes "invoice_\u{202e}fdp.exe" read as "invoice_exe.pdf".
        ("invoice_\u{202e}fdp.exe", "invoice_fdp.exe"),
        (
            "a\u{200b}b\u{2066}c\u{2069}d\u{feff}e\u{2028}f.txt",
            "abcdef.txt",
        ),
        ("naïve café 東京 😀.jpg", "naïve café 東京 😀.jpg"),
        ("שלום.txt", "שלום.txt"),
        ("quote\"semi;colon%.txt", "quote\"semi;colon%.txt"),
        ("trailing dot.", "trailing dot."),
    ] {
        assert_eq!(file_name(raw).as_deref(), Ok(clean), "{raw:?}");
    }
}

#[test]
fn a_name_with_nothing_left_is_refused() {
    for raw in [
        "",
        "   ",
        ".",
        "..",
        "...",
        "dir/",
        r"C:\dir\",
        "\u{202e}\u{200b}",
        "\n\t",
        "a/. .",
    ] {
        assert_eq!(file_name(raw), Err(NameError::Empty), "{raw:?}");
    }
}

#[test]
fn a_name_of_1000_characters_is_cut_keeping_its_extension() {
    let name = file_name(&format!("{}.pdf", "a".repeat(1000))).unwrap();
    assert_eq!(name.len(), NAME_BYTES_MAX);
    assert!(name.ends_with("aaa.pdf"));

    // Multi-byte characters are never split: 1000 × "é" is 2000 bytes.
    let name = file_name(&format!("{}.txt", "é".repeat(1000))).unwrap();
    assert!(name.len() <= NAME_BYTES_MAX);
    assert!(name.ends_with("é.txt"), "{name}");
    assert_eq!(name.len(), 2 * 125 + 4);

    // No extension: just cut.
    let name = file_name(&"東".repeat(1000)).unwrap();
    assert_eq!(name.len(), 255); // 85 characters of 3 bytes
    assert!(name.chars().all(|c| c == '東'));
}

#[test]
fn content_disposition_has_an_ascii_fallback_and_the_exact_name() {
    assert_eq!(
        content_disposition(Disposition::Attachment, "report.pdf"),
        "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
    );
    assert_eq!(
        content_disposition(Disposition::Inline, "café 1.png"),
        "inline; filename=\"caf_ 1.png\"; filename*=UTF-8''caf%C3%A9%201.png"
    );
    assert_eq!(
        content_disposition(Disposition::Attachment, "a\"b\\c%d;e.txt"),
        "attachment; filename=\"a_b_c_d;e.txt\"; filename*=UTF-8''a%22b%5Cc%25d%3Be.txt"
    );
}

#[test]
fn content_disposition_of_any_string_is_a_valid_header_value() {
    let value = content_disposition(Disposition::Attachment, "evil\r\nSet-Cookie: x=1\u{202e}\0");
    assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)), "{value}");
    assert!(
        value.starts_with("attachment; filename=\"evil__Set-Cookie: x=1__\";"),
        "{value}"
    );
}
