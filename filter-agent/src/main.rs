fn main() -> std::process::ExitCode {
    filter_agent::cli::main()
}
