namespace Lab.Fusefs;

/// <summary>
/// The content of the virtual <c>.lab/</c> directory at the root of the mount, provided by the daemon.
/// </summary>
public interface ILabDirectory
{
    /// <summary><c>.lab/control</c> is a symlink to this path.</summary>
    string ControlSocketPath { get; }
    /// <summary>Regular (read-only) files under <c>.lab</c>, e.g. "stats".</summary>
    IReadOnlyList<string> FileNames { get; }
    /// <summary>A file's content, rendered once per open.</summary>
    byte[] Render(string name);
}
