fn main() -> std::process::ExitCode {
    gateway_user::main()
}
