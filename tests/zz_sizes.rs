#[test]
fn sizes() {
    use pingora::protocols::http::ServerSession;
    eprintln!("ServerSession {}", std::mem::size_of::<ServerSession>());
    eprintln!(
        "HttpSession v1 {}",
        std::mem::size_of::<pingora::protocols::http::v1::server::HttpSession>()
    );
    eprintln!(
        "RequestHeader {}",
        std::mem::size_of::<pingora::http::RequestHeader>()
    );
    eprintln!(
        "ResponseHeader {}",
        std::mem::size_of::<pingora::http::ResponseHeader>()
    );
    eprintln!(
        "Answer {}",
        std::mem::size_of::<botbridge::httpio::Answer>()
    );
}
