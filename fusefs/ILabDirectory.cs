namespace Lab.Fusefs;
public interface ILabDirectory
{
    /// <summary>`.lab/control` is a symlink to this path.</summary>
    string ControlSocketPath { get; }
    /// <summary>Entries of a directory under .lab: "" is .lab itself, "processes", "processes/123", "objects".
    /// A name ending in '/' is a subdirectory (the '/' is not part of its name). Null: no such directory.
    /// "control" is added by the file system itself at the top.</summary>
    IReadOnlyList<string>? List(string dir);
    /// <summary>The content of a file under .lab ("stats", "processes/123/maps", "objects/7"), made at open; null: no such file.</summary>
    byte[]? Render(string path);
}
