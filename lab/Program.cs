[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Lab;

public static class Program
{
    public static int Main(string[] args) => Cli.Run(args);
}
