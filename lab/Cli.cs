namespace Lab;

public static class Cli
{
    public static int Run(string[] args) { Console.Error.WriteLine("lab: not built yet"); return 2; }
}
